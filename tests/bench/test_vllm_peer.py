"""bench/vllm_peer.py: how serve_bench starts vLLM's CPU build (no vLLM needed: the launch is data)."""

from __future__ import annotations

import pytest

from bench import vllm_peer


def test_threads_bind_gives_vllm_as_many_compute_threads_as_ours():
    assert vllm_peer.threads_bind(1) == "0"
    assert vllm_peer.threads_bind(2) == "0-1"
    assert vllm_peer.threads_bind(8) == "0-7"
    with pytest.raises(ValueError, match="threads"):
        vllm_peer.threads_bind(0)


def test_launch_passes_the_bench_dtype_after_the_scripts_own(tmp_path):
    spec = vllm_peer.launch(tmp_path, 8123, threads=2, dtype="bfloat16", script="/x/vllm_cpu.sh",
                            extra=["--mm-processor-cache-gb", "0"], kv_gb=2)
    # the script runs `... --dtype float32 "$@"`: ours comes later in argv, so vLLM's parser keeps it
    assert spec.command[:4] == ["bash", "/x/vllm_cpu.sh", str(tmp_path.resolve()), "8123"]
    assert spec.command[4:6] == ["--dtype", "bfloat16"]
    assert "--enable-prompt-tokens-details" in spec.command
    assert spec.command[-2:] == ["--mm-processor-cache-gb", "0"]
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" == spec.threads_bind
    assert spec.env["KV_GB"] == "2"
    assert spec.model_name == str(tmp_path.resolve())
    assert "KV_GB" not in vllm_peer.launch(tmp_path, 1, 2, "float32").env  # the script's default then


def test_launch_refuses_an_unresolved_dtype(tmp_path):
    with pytest.raises(ValueError, match="'auto'"):
        vllm_peer.launch(tmp_path, 8123, threads=2, dtype="auto")


def test_version_is_empty_without_a_venv(tmp_path):
    assert vllm_peer.version(str(tmp_path / "none")) == ""

