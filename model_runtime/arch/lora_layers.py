"""LoRA deltas for several adapters in one forward: each adapter's rows get its low-rank delta.

`attach_lora(model)` wraps the language model's linears (q, k, v, o, gate, up, down of every
decoder layer) in `LoraLinear`s that share one `LoraStep`. The base linear (plain, packed or a
part of a fused matmul, arch/cpu_linear.py) still runs once over every packed token of the step;
then, for each adapter that has tokens in this forward, its tokens' rows get
`scaling * B(A(x))` added (PEFT's unmerged formula), by an index_add over those rows only. Rows
of the base model, and of adapters that do not target a layer, keep the base linear's bits.
An adapter's weights sit in a slot of each wrapper (`LoraLinear.adapters`); the runner says per
forward which packed tokens belong to which slot (`LoraStep.groups`). No copy of the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's pair for one linear: delta(x) = scaling * (x A^T) B^T."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.to(self.a.dtype), self.a), self.b) * self.scaling


@dataclass
class LoraStep:
    """Which packed tokens of the running forward belong to which adapter slot (set by the runner)."""

    groups: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (slot, token indices [n] long)


class LoraLinear(nn.Module):
    """A linear of the language model with the deltas of the adapters in its slots, per group of rows."""

    def __init__(self, base: nn.Module, step: LoraStep) -> None:
        super().__init__()
        self.base = base
        self.step = step
        self.in_features, self.out_features = getattr(base, "in_features"), getattr(base, "out_features")  # noqa: B009
        self.adapters: dict[int, LoraWeights] = {}  # slot -> this adapter's pair for this linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        groups = [(slot, rows) for slot, rows in self.step.groups if slot in self.adapters]
        if not groups:
            return y
        flat_x = x.reshape(-1, x.shape[-1])
        flat_y = y.reshape(-1, y.shape[-1])
        for slot, rows in groups:
            delta = self.adapters[slot].delta(flat_x.index_select(0, rows))
            flat_y = flat_y.index_add(0, rows, delta.to(flat_y.dtype))
        return flat_y.view(y.shape)

    def extra_repr(self) -> str:
        return f"adapters in slots {sorted(self.adapters)}"


def attach_lora(model: nn.Module, step: LoraStep) -> dict[str, LoraLinear]:
    """Wrap every LORA_TARGETS linear of the decoder layers; returns them by their module path
    (e.g. "model.layers.0.self_attn.q_proj", as PEFT names its targets)."""
    wrapped: dict[str, LoraLinear] = {}
    layers = model.get_submodule("model.layers")
    for name, module in list(layers.named_modules()):
        for target in LORA_TARGETS:
            child = getattr(module, target, None)
            if isinstance(child, nn.Module) and not isinstance(child, LoraLinear):
                lora = LoraLinear(child, step)
                setattr(module, target, lora)
                wrapped[f"model.layers.{name}.{target}" if name else f"model.layers.{target}"] = lora
    return wrapped
