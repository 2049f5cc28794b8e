"""bitsandbytes quantization of the language model at load time (8-bit LLM.int8, 4-bit NF4).

Only the linear layers of the decoder (`model.layers.*`) are quantized; the towers, projectors,
image_newline, embeddings and lm_head stay in the compute dtype (ORIG builder.py quantizes the
whole model through `load_in_4bit`; its towers are rebuilt unquantized afterwards). The layers are
swapped by transformers' `BitsAndBytesConfig` path inside `from_pretrained`, on any device
bitsandbytes supports, the CPU included.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BitsAndBytesConfig

QUANTIZATIONS = ("none", "bitsandbytes-8bit", "bitsandbytes-4bit")
# transformers matches each pattern from the start of a module's full name (or as a suffix), so
# this keeps every `model.*` child other than the decoder layers, and lm_head, unquantized.
KEEP_UNQUANTIZED = ("lm_head", r"model\.(?!layers\.)[^.]+")


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: expected one of {QUANTIZATIONS}")
    if quantization == "none":
        return None
    if quantization == "bitsandbytes-8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(KEEP_UNQUANTIZED))
    # ORIG builder.py: nf4 with double quantization
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(KEEP_UNQUANTIZED),
    )


def default_compute_dtype(quantization: str, checkpoint_dtype: torch.dtype) -> torch.dtype:
    """`dtype="auto"` with quantization: LLM.int8 multiplies in float16 whatever it is given, so the
    8-bit model computes in float16 (ORIG's choice too); 4-bit keeps the checkpoint's dtype."""
    if quantization == "bitsandbytes-8bit":
        return torch.float16
    return checkpoint_dtype


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
