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
input embeddings becomes a separate copy, reported). With `fuse=True` the linears that read the
same input become one packed matmul (`FusedLinears`): the attention's q, k and v projections, the
MLP's gate and up projections, 4 matmuls per layer instead of 7. Each projection is then a
`FusedPart` returning its columns of the fused result, computed once for the input it is given:
the layer code of transformers is unchanged, and each column is the same dot product over the same
weights, so the bits equal the separate matmuls (checked with `torch.equal`). It is off by default:
on a 2-core AMX Xeon, float32, realistic demo, the fused layers computed prompts at 103-104 tokens/s
against 121-131 separate, and decoded one row in 195-206 ms against 181-195 (two interleaved rounds
of `bench/decode_profile.py --levels 1,8 [--no-fuse]`, a shared machine): the fused outputs' column
slices feed the next operations strided, which costs more than the calls it saves. The vision tower, projector and audio tower
keep plain linears: their matmuls have hundreds of rows, where packing gains nothing. float32 on
the CPU is packed, and bfloat16 where the CPU multiplies it natively (AVX512-BF16 or AMX): on a
2-core AMX Xeon, one thread, Qwen2-0.5B's MLP weight times 256 rows took 9 ms packed in bfloat16
against 14 ms through `F.linear` in bfloat16 and 30 ms packed in float32, the output head times
8 rows 41 against 78 and 108 ms (the rows still independent of the batch, checked with
`torch.equal`). Where the reorder is refused the layer stays plain. The model is then for serving only: its state dict no longer holds
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
        self._pack(linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None)

    @classmethod
    def of_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed._pack(weight, bias)
        return packed

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS),
                             persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedLinears(nn.Module):
    """Linears that read one input as one packed matmul over their stacked weights."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        with_bias = [lin.bias is not None for lin in linears]
        if any(with_bias) and not all(with_bias):
            raise ValueError("fused linears must all have a bias or none")
        weight = torch.cat([lin.weight.detach() for lin in linears])
        bias = torch.cat([lin.bias.detach() for lin in linears if lin.bias is not None]) if all(with_bias) else None
        self.linear = PackedLinear.of_weight(weight, bias)
        ends = [0]
        for lin in linears:
            ends.append(ends[-1] + lin.out_features)
        self.bounds = list(zip(ends, ends[1:], strict=False))
        # the last input and its fused result, until every part has taken its columns
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._untaken = 0

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x or self._output is None:
            self._input, self._output, self._untaken = x, self.linear(x), len(self.bounds)
        lo, hi = self.bounds[index]
        out = self._output[..., lo:hi]
        self._untaken -= 1
        if self._untaken == 0:  # every part has its columns: hold nothing between forwards
            self._input = self._output = None
        return out


class FusedPart(nn.Module):
    """One linear of a `FusedLinears`: its columns of the fused matmul of this input."""

    def __init__(self, fused: FusedLinears, index: int) -> None:
        super().__init__()
        self.fused = fused
        self.index = index
        lo, hi = fused.bounds[index]
        self.in_features, self.out_features = fused.linear.in_features, hi - lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(self.index, x)

    def extra_repr(self) -> str:
        return f"part {self.index} of {len(self.fused.bounds)}, out_features={self.out_features}"


FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # linears of one module reading one input


def can_pack(linear: nn.Module) -> TypeGuard[nn.Linear]:
    w = getattr(linear, "weight", None)
    return (type(linear) is nn.Linear and w is not None and w.device.type == "cpu"
            and (w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and native_bf16()))
            and torch.backends.mkldnn.is_available())


def native_bf16() -> bool:
    """The CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles), as oneDNN's packed path needs."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, None) is not None and getattr(torch.cpu, probe)() for probe in probes)


def pack_linears(model: PreTrainedModel, fuse: bool = False) -> int:
    """Pack the decoder layers' and the output head's linears in place (with `fuse`, the linears
    of FUSED_GROUPS as one matmul each); the number of linears packed."""
    layers = model.get_submodule("model.layers")
    count = _fuse_groups(layers) if fuse else 0
    targets = [(name, module) for name, module in layers.named_modules() if can_pack(module)]
    head = model.get_output_embeddings()
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


def _fuse_groups(layers: nn.Module) -> int:
    """Replace each complete group of FUSED_GROUPS (all packable, one input size) by the parts of one
    FusedLinears; the number of linears fused."""
    count = 0
    for module in list(layers.modules()):
        for names in FUSED_GROUPS:
            linears = [getattr(module, n, None) for n in names]
            if not all(lin is not None and can_pack(lin) for lin in linears):
                continue
            group = [lin for lin in linears if lin is not None and can_pack(lin)]
            if len({lin.in_features for lin in group}) != 1:
                continue
            try:
                fused = FusedLinears(group)
            except (RuntimeError, ValueError) as error:  # the reorder refused it, or mixed biases
                log.info("%s stay separate: %s", "/".join(names), error)
                continue
            for i, n in enumerate(names):
                setattr(module, n, FusedPart(fused, i))
            count += len(names)
    return count
