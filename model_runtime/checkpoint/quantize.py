"""bitsandbytes quantization of the language model at load time (8-bit LLM.int8, 4-bit NF4).

Only the linear layers of the decoder (`model.layers.*`) are quantized; the towers, projectors,
image_newline, embeddings and lm_head stay in the compute dtype (ORIG builder.py quantizes the
whole model through `load_in_4bit`; its towers are rebuilt unquantized afterwards). The layers are
swapped by transformers' `BitsAndBytesConfig` path inside `from_pretrained`, on any device
bitsandbytes supports, the CPU included.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import BitsAndBytesConfig

from model_runtime.checkpoint.precision import DtypeChoice

QUANTIZATIONS = ("none", "bitsandbytes-8bit", "bitsandbytes-4bit")
# transformers matches each pattern from the start of a module's full name (or as a suffix), so
# this keeps every `model.*` child other than the decoder layers, and lm_head, unquantized.
KEEP_UNQUANTIZED = ("lm_head", r"model\.(?!layers\.)[^.]+")
INT8_LOGGER = "bitsandbytes.autograd._functions"
# bitsandbytes uses torch._int_mm for LLM.int8 on the CPU only where torch reports AVX512 (f, bw, vl, dq)
INT8_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


class _CastNotice(logging.Filter):
    """LLM.int8 logs on every call whose input is not float16 that the input is cast to float16 to be
    quantized (the product comes back in the input's dtype): a line per layer per step. Dropped; the
    start-up log states what 8-bit costs on the CPU (`cpu_slowdown`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "during quantization" not in record.getMessage()


CAST_NOTICE = _CastNotice()


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: expected one of {QUANTIZATIONS}")
    if quantization == "none":
        return None
    if quantization == "bitsandbytes-8bit":
        logging.getLogger(INT8_LOGGER).addFilter(CAST_NOTICE)  # once: a logger keeps one of each filter
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(KEEP_UNQUANTIZED))
    # ORIG builder.py: nf4 with double quantization
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(KEEP_UNQUANTIZED),
    )


def default_compute_dtype(quantization: str, device_kind: str, hardware: DtypeChoice) -> DtypeChoice:
    """`dtype="auto"` with quantization. On CUDA, LLM.int8 multiplies in float16 whatever it is given,
    so the 8-bit model computes in float16 there (ORIG's choice too). On the CPU LLM.int8 casts only
    the input it quantizes to float16 and returns the product in the input's dtype, and 4-bit
    computes in `bnb_4bit_compute_dtype`: the rest of the model (towers, head) computes in the dtype
    chosen here, so both take what the hardware computes fast (`hardware`)."""
    if quantization == "bitsandbytes-8bit" and device_kind == "cuda":
        return DtypeChoice(torch.float16, "LLM.int8 (bitsandbytes-8bit) computes in float16 on CUDA")
    return hardware


def cpu_slowdown(quantization: str, device_kind: str, capabilities: frozenset[str]) -> str | None:
    """Why `quantization` computes slower than float32 on a CPU with `capabilities` (CPU flags,
    precision.detect_capabilities); None where it does not, or off the CPU.

    From bitsandbytes 0.50's CPU code and bench/quant_bench.py on the realistic demo (2-core AMX
    Xeon, 2 threads, shared; CPU time of the process against float32 with packed linears, best of 2
    rounds; docs/PERFORMANCE.md, "Quantized paths on the CPU"):
    - 8-bit with AVX-512 (torch._int_mm): prefill 0.65-0.69x, decode steps 0.94-1.18x: not slower.
      Without AVX-512 bitsandbytes' int8 product converts both operands to float32 on every call
      (backends/default/ops.py) and then multiplies in float32: more work than float32 itself.
    - 4-bit with AVX512-BF16 (its fused NF4 kernel): decode steps 0.57-1.04x, prefill 1.95-1.98x.
    - 4-bit without it (measured by switching the kernel off): each weight dequantized on every
      call, decode steps 2.36-2.78x, prefill 1.10x.
    """
    if device_kind != "cpu" or quantization == "none":
        return None
    if quantization == "bitsandbytes-8bit":
        if INT8_CPU_FLAGS.issubset(capabilities):
            return None
        return ("without AVX-512 bitsandbytes multiplies int8 on the CPU by converting both operands to float32 on "
                "every call, more work than float32 itself")
    if "avx512_bf16" in capabilities:
        return ("bitsandbytes' fused 4-bit CPU kernel (AVX512-BF16) decodes about as fast as float32 but computes "
                "prompts at about half its speed (prefill 1.95-1.98x the CPU time, measured)")
    return ("without AVX512-BF16 bitsandbytes has no fused 4-bit CPU kernel: every NF4 weight is dequantized on "
            "every call (decode steps 2.4-2.8x the CPU time of float32, measured)")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, including bitsandbytes' quantization state
    (LLM.int8 row scales, NF4 absmax and its double-quantization statistics)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += tensor.numel() * tensor.element_size()
        total += sum(t.numel() * t.element_size() for t in _quant_state_tensors(tensor))
    return total


def _quant_state_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        found.append(scb)
    state = getattr(param, "quant_state", None)
    while state is not None:
        for name in ("absmax", "code", "offset"):
            value = getattr(state, name, None)
            if isinstance(value, torch.Tensor):
                found.append(value)
        state = getattr(state, "state2", None)
    return found


def quantized_module_names(model: nn.Module) -> list[str]:
    """Names of the modules bitsandbytes replaced (Linear8bitLt / Linear4bit)."""
    import bitsandbytes as bnb

    return [name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt | bnb.nn.Linear4bit)]
