"""The language model's linear layers with their weights packed once for oneDNN (CPU serving).

A decode step multiplies a few rows by every weight of the language model. PyTorch's default CPU
matmul (MKL) is slow at that shape: on a 2-core AVX2 EPYC, float32, Qwen2-0.5B's MLP weight
(896 x 4,864) times 8 rows took 2.5-5 ms through `F.linear` and 0.9-1.5 ms through oneDNN with the
weight reordered once into its blocked layout; the 151,936-row output head times 8 rows 209 ms
against 61 ms; 1 row 48 against 26 ms; 256 rows about the same, 1,024 rows within +-20%
(bench/linear_bench.py prints these side by side; docs/PERFORMANCE.md). A second property matters as
much: with the weight packed for a batch of 16 or more rows, a row's result does not depend on how
many other rows share the call (checked with `torch.equal`), where MKL's does. So a sequence's
logits are the same bits whether it decodes alone or in a batch.

`pack_linears(model)` swaps every `nn.Linear` of the decoder layers and the output head for a
`PackedLinear` holding the reordered weight (the same bytes, another layout; a head tied to the
input embeddings becomes a separate copy, reported). The vision tower, projector and audio tower
keep plain linears: their matmuls have hundreds of rows, where packing gains nothing. Only float32
on the CPU is packed (oneDNN's bfloat16 path needs AVX512 or AVX-NE-CONVERT; where the reorder is
refused the layer stays plain). The model is then for serving only: its state dict no longer holds
those weights under their checkpoint names.
"""

from __future__ import annotations

import logging
from typing import TypeGuard

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

PACK_ROWS = 64  # the batch size the weight layout is chosen for (>= 16 keeps rows independent of the batch)


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS),
                             persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(linear: nn.Module) -> TypeGuard[nn.Linear]:
    w = getattr(linear, "weight", None)
    return (type(linear) is nn.Linear and w is not None and w.device.type == "cpu" and w.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def pack_linears(model: PreTrainedModel) -> int:
    """Pack the decoder layers' and the output head's linears in place; the number packed."""
    layers = model.get_submodule("model.layers")
    targets = [(name, module) for name, module in layers.named_modules() if can_pack(module)]
    head = model.get_output_embeddings()
    count = 0
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = layers.get_submodule(parent_name) if parent_name else layers
        try:
            setattr(parent, attr, PackedLinear(linear))
        except RuntimeError as error:  # the reorder refused this machine or shape: keep the plain layer
            log.info("linear %s stays unpacked: %s", name, error)
            continue
        count += 1
    if head is not None and can_pack(head):
        tied = head.weight is model.get_input_embeddings().weight
        try:
            model.lm_head = PackedLinear(head)
            count += 1
            if tied:
                log.info("the output head is tied to the input embeddings: its packed copy takes %.0f MiB more",
                         head.weight.numel() * head.weight.element_size() / 2**20)
        except RuntimeError as error:
            log.info("the output head stays unpacked: %s", error)
    return count
