"""`--dtype auto`: the choice for each checkpoint dtype, device kind and set of CPU flags; reading the flags."""

from __future__ import annotations

import pytest
import torch

from model_runtime.checkpoint.loader import resolve_dtype
from model_runtime.checkpoint.precision import choose_dtype, cpu_flags, detect_capabilities, device_kind

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX_BF16 = AVX512 | {"amx_tile", "amx_bf16", "amx_int8"}  # e.g. a Xeon without avx512_bf16 reported
AVX512_FP16 = AVX512 | {"avx512_fp16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | AMX_BF16 | AVX512_FP16
GRANITE_RAPIDS = SAPPHIRE_RAPIDS | {"amx_fp16"}
ARM = frozenset({"fp", "asimd", "sve"})

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

CASES = [
    # checkpoint, device, capabilities -> served dtype
    (BF16, "cpu", AVX2, F32),
    (F16, "cpu", AVX2, F32),
    (F32, "cpu", AVX2, F32),
    (BF16, "cpu", AVX512, F32),
    (BF16, "cpu", AVX512_BF16, BF16),
    (F16, "cpu", AVX512_BF16, F32),  # native bf16 is not native fp16
    (BF16, "cpu", AMX_BF16, BF16),
    (F16, "cpu", AMX_BF16, F32),
    (BF16, "cpu", AVX512_FP16, F32),
    (F16, "cpu", AVX512_FP16, F16),
    (BF16, "cpu", SAPPHIRE_RAPIDS, BF16),
    (F16, "cpu", SAPPHIRE_RAPIDS, F16),
    (F32, "cpu", SAPPHIRE_RAPIDS, F32),  # never lower than the checkpoint
    (F16, "cpu", GRANITE_RAPIDS, F16),
    (BF16, "cpu", ARM, F32),
    (BF16, "cuda", frozenset({"bf16"}), BF16),
    (F32, "cuda", frozenset({"bf16"}), BF16),
    (F16, "cuda", frozenset({"bf16"}), F16),
    (BF16, "cuda", frozenset(), F16),
    (F32, "cuda", frozenset(), F16),
    (F16, "cuda", frozenset(), F16),
    (BF16, "mps", frozenset(), BF16),  # no rule: the checkpoint's
]


@pytest.mark.parametrize(("checkpoint", "device", "capabilities", "expected"), CASES)
def test_choice_for_each_flag_set(checkpoint, device, capabilities, expected):
    choice = choose_dtype(checkpoint, device, capabilities)
    assert choice.dtype == expected
    assert choice.reason


def test_reasons_name_what_decided():
    assert "no native bfloat16" in choose_dtype(BF16, "cpu", AVX2).reason
    assert "amx_bf16" in choose_dtype(BF16, "cpu", AMX_BF16).reason
    assert "avx512_fp16" in choose_dtype(F16, "cpu", AVX512_FP16).reason
    assert "no bfloat16" in choose_dtype(BF16, "cuda", frozenset()).reason


def test_resolve_dtype_names_quantization_and_explicit_choices():
    bf16_config = {"torch_dtype": "bfloat16"}
    assert resolve_dtype("auto", bf16_config, "none", "cpu", AVX2).dtype == F32
    assert resolve_dtype("auto", {"dtype": "float16"}, "none", "cpu", AVX512_FP16).dtype == F16
    assert resolve_dtype("auto", {}, "none", "cpu", AVX2).dtype == F32  # no dtype recorded: float32
    # on the CPU bitsandbytes computes in the input's dtype: the hardware's choice, 8-bit and 4-bit alike
    for quantization in ("bitsandbytes-8bit", "bitsandbytes-4bit"):
        assert resolve_dtype("auto", bf16_config, quantization, "cpu", AVX2).dtype == F32
        assert resolve_dtype("auto", bf16_config, quantization, "cpu", AMX_BF16).dtype == BF16
    # LLM.int8 multiplies in float16 on CUDA
    eight = resolve_dtype("auto", bf16_config, "bitsandbytes-8bit", "cuda", frozenset({"bf16"}))
    assert eight.dtype == F16 and "LLM.int8" in eight.reason
    assert resolve_dtype("auto", bf16_config, "bitsandbytes-4bit", "cuda", frozenset({"bf16"})).dtype == BF16
    explicit = resolve_dtype("bfloat16", bf16_config, "none", "cpu", AVX2)
    assert explicit.dtype == BF16 and explicit.reason == "--dtype bfloat16"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse4_2
"""


def test_cpu_flags_from_a_cpuinfo_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    flags = cpu_flags(path)
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= flags and "spectre_v1" not in flags
    assert choose_dtype(BF16, "cpu", flags).dtype == BF16
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm sve\n")
    assert cpu_flags(tmp_path / "arm") == {"fp", "asimd", "evtstrm", "sve"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_detect_capabilities_on_this_machine():
    flags = detect_capabilities("cpu")
    assert flags, "neither /proc/cpuinfo nor torch's probes reported a flag"
    if torch.cpu._is_avx512_bf16_supported():
        assert "avx512_bf16" in flags
    assert detect_capabilities("mps") == frozenset()


def test_device_kind_follows_the_device_map():
    assert device_kind("cpu", None) == "cpu"
    assert device_kind("cuda:1", None) == "cuda"
    assert device_kind("cpu", "cuda:0") == "cuda"
    assert device_kind("cuda", "cpu") == "cpu"
    assert device_kind("cpu", {"": "cpu"}) == "cpu"
    assert device_kind("cpu", {"model": 0, "lm_head": "cpu"}) == "cuda"
    assert device_kind("cpu", {"model": "cpu", "lm_head": "disk"}) == "cpu"
    assert device_kind("cpu", "auto") == ("cuda" if torch.cuda.is_available() else "cpu")
