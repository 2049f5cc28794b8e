"""`dtype="auto"`: the dtype a checkpoint is served in, chosen for what the hardware computes fast.

`choose_dtype` is a pure function of the checkpoint's dtype, the device kind and a set of
capabilities (CPU flags as /proc/cpuinfo names them; "bf16" on CUDA when the GPU has it);
`detect_capabilities` asks this machine. On a CPU a 16-bit dtype is kept only where the CPU
multiplies it natively (without AVX512-BF16/AMX-BF16, bfloat16 matmul runs about 100x slower than
float32: 1.3 against 112 GFLOP/s on a 2-core AVX2 EPYC, docs/PERFORMANCE.md). It knows nothing of
quantization (quantize.py) or of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPU_FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
CUDA_BF16 = "bf16"  # the capability detect_capabilities("cuda") reports when torch.cuda.is_bf16_supported()
CPUINFO = Path("/proc/cpuinfo")
# torch's own CPU probes (torch.cpu, private in 2.x), for where /proc/cpuinfo is absent (macOS, Windows);
# AMX tiles have come with AMX-BF16 on every CPU that has them
_TORCH_CPU_PROBES = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
                     "amx_fp16": "_is_amx_fp16_supported",
                     # torch's AVX512 level: f, bw, vl and dq together
                     **dict.fromkeys(("avx512f", "avx512bw", "avx512vl", "avx512dq"), "_is_avx512_supported")}
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class DtypeChoice:
    """What `--dtype` resolved to, and why (the start-up log and /version say both)."""

    dtype: torch.dtype
    reason: str


def choose_dtype(checkpoint: torch.dtype, device_kind: str, capabilities: frozenset[str]) -> DtypeChoice:
    """`checkpoint`: the dtype config.json records; `device_kind`: "cpu", "cuda", ...;
    `capabilities`: CPU flags (avx512_bf16, amx_bf16, avx512_fp16, amx_fp16) or, on CUDA, "bf16"."""
    stored = _NAMES.get(checkpoint, str(checkpoint).removeprefix("torch."))
    if device_kind == "cpu":
        return _choose_cpu(checkpoint, stored, capabilities)
    if device_kind == "cuda":
        return _choose_cuda(checkpoint, stored, capabilities)
    return DtypeChoice(checkpoint, f"the checkpoint's {stored} (no rule for device {device_kind!r})")


def _choose_cpu(checkpoint: torch.dtype, stored: str, capabilities: frozenset[str]) -> DtypeChoice:
    if checkpoint == torch.bfloat16:
        native = sorted(CPU_BF16_FLAGS & capabilities)
        if native:
            return DtypeChoice(torch.bfloat16, f"the checkpoint's bfloat16; this CPU multiplies it natively "
                                               f"({', '.join(native)})")
        return DtypeChoice(torch.float32, "checkpoint bfloat16, but this CPU has no native bfloat16 (no AVX512-BF16 "
                                          "or AMX-BF16): float32 computes about 100x faster here")
    if checkpoint == torch.float16:
        native = sorted(CPU_FP16_FLAGS & capabilities)
        if native:
            return DtypeChoice(torch.float16, f"the checkpoint's float16; this CPU multiplies it natively "
                                              f"({', '.join(native)})")
        return DtypeChoice(torch.float32, "checkpoint float16, but this CPU has no native float16 (no AVX512-FP16 "
                                          "or AMX-FP16): float32 computes much faster here")
    return DtypeChoice(checkpoint, f"the checkpoint's {stored}")


def _choose_cuda(checkpoint: torch.dtype, stored: str, capabilities: frozenset[str]) -> DtypeChoice:
    has_bf16 = CUDA_BF16 in capabilities
    if checkpoint == torch.float16:
        return DtypeChoice(torch.float16, "the checkpoint's float16 (every CUDA GPU computes it)")
    if has_bf16:
        why = "the checkpoint's bfloat16" if checkpoint == torch.bfloat16 else f"checkpoint {stored}; bfloat16"
        return DtypeChoice(torch.bfloat16, f"{why}: this GPU supports it")
    return DtypeChoice(torch.float16, f"checkpoint {stored}, but this GPU has no bfloat16: float16")


def detect_capabilities(device_kind: str) -> frozenset[str]:
    """What `choose_dtype` needs to know about this machine's `device_kind`."""
    if device_kind == "cuda":
        return frozenset({CUDA_BF16}) if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else frozenset()
    if device_kind != "cpu":
        return frozenset()
    return cpu_flags(CPUINFO) or _torch_cpu_flags()


def cpu_flags(cpuinfo: Path) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo file (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            return frozenset(value.split())
    return frozenset()


def _torch_cpu_flags() -> frozenset[str]:
    found = set()
    for flag, probe in _TORCH_CPU_PROBES.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            found.add(flag)
    return frozenset(found)


def device_kind(device: str, device_map: str | dict | None) -> str:
    """The kind of device the language model lands on: `device_map` wins over `device` (as in loading)."""
    if device_map is None:
        return torch.device(device).type
    if isinstance(device_map, dict):
        kinds = {"cuda" if isinstance(v, int) else str(v).partition(":")[0] for v in device_map.values()}
        return "cuda" if "cuda" in kinds else "cpu"  # the rest of a map: cpu, disk (offloaded, computed on the CPU)
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device_map).type
