"""bench/gpu_check.sh: shell-lint clean, and on a machine without a usable GPU it says so and runs nothing.

The GPU path itself (pytest -m gpu, the bf16 and 4-bit engine benchmarks) needs an NVIDIA GPU: it is
run by hand where one is available (docs/DEPLOY.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from tests.deploy.artifacts import ROOT, run, tool

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_shellcheck_passes():
    result = run(tool("shellcheck"), "--severity=style", str(SCRIPT))
    assert result.returncode == 0, result.stdout + result.stderr


def run_check(tmp_path, **env) -> tuple[int, str, list[str]]:
    out = tmp_path / "out"
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    result = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)
    return result.returncode, (out / "results.md").read_text(), sorted(p.name for p in out.iterdir())


def test_no_nvidia_driver_means_nothing_runs(tmp_path):
    code, results, files = run_check(tmp_path, NVIDIA_SMI=str(tmp_path / "no-such-nvidia-smi"))
    assert code == 2
    assert "NO GPU" in results and "nothing was run" in results
    assert "gpu-tests.log" not in files and not any(f.startswith("bench-") for f in files)


def test_torch_without_cuda_means_nothing_runs(tmp_path):
    fake_smi = tmp_path / "nvidia-smi"  # the driver answers, but this interpreter's torch is a CPU build
    fake_smi.write_text("#!/bin/sh\necho 'GPU 0: stand-in (UUID: GPU-0)'\n")
    fake_smi.chmod(0o755)
    assert not torch.cuda.is_available(), "the suite runs on the CPU build of torch (Makefile)"
    code, results, files = run_check(tmp_path, NVIDIA_SMI=str(fake_smi))
    assert code == 2
    assert "GPU 0: stand-in" in results and "cannot use CUDA" in results
    assert "gpu-tests.log" not in files


def test_benchmark_flags_exist_in_engine_bench():
    runs = re.findall(r"^\s*run_bench (\S+) (.+)$", SCRIPT.read_text(), re.M)
    assert {name for name, _ in runs} == {"bf16", "4bit"}
    usage = run(sys.executable, "bench/engine_bench.py", "--help").stdout
    for name, flags in runs:
        for flag in [f for f in flags.split() if f.startswith("--")] + ["--out"]:
            assert re.search(rf"{flag}\b", usage), f"gpu_check.sh's {name} run passes {flag}: engine_bench.py lacks it"
    assert "bitsandbytes-4bit" in dict(runs)["4bit"]
