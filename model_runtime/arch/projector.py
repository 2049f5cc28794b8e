"""Multimodal projectors Cv -> D (ORIG llava/model/multimodal_projector/builder.py).

Parameter names follow ORIG's nn.Sequential indices (`0`, `2`, ...) so `model.mm_projector.*`
keys load unchanged.
"""

from __future__ import annotations

import re

from torch import nn

from model_runtime.config import LlavaConfig


def build_vision_projector(cfg: LlavaConfig) -> nn.Module:
    kind = cfg.mm_projector_type
    cv, d = cfg.mm_hidden_size, cfg.hidden_size
    if kind == "linear":
        return nn.Linear(cv, d)
    if kind == "identity":
        if cv != d:
            raise ValueError(f"mm_projector_type='identity' needs mm_hidden_size == hidden_size, got {cv} != {d}")
        return nn.Identity()
    m = re.match(r"^mlp(\d+)x_gelu$", kind)
    if m:
        layers: list[nn.Module] = [nn.Linear(cv, d)]
        for _ in range(int(m.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(d, d)]
        return nn.Sequential(*layers)
    raise ValueError(f"mm_projector_type={kind!r} is not supported yet")
