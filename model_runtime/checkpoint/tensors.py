"""Copy named tensors into a loaded model, checking names and shapes (the non-strict loads of ORIG
builder.py, made strict about what they do touch)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model_runtime.config import ConfigError


def load_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> set[str]:
    """Copy each tensor into the parameter or buffer of the same name (cast to its dtype, on its
    device). Unknown names, shape mismatches and quantized targets are errors. Returns the names."""
    if not tensors:
        return set()
    targets: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers(remove_duplicate=False)))
    unknown = sorted(set(tensors) - set(targets))
    if unknown:
        raise ConfigError(f"tensors that this model does not have: {', '.join(unknown[:8])}")
    with torch.no_grad():
        for name, value in tensors.items():
            target = targets[name]
            if not target.dtype.is_floating_point and value.dtype.is_floating_point:
                raise ConfigError(f"{name} is quantized in this model; merge the checkpoint before quantizing")
            if tuple(target.shape) != tuple(value.shape):
                raise ConfigError(f"{name}: shape {tuple(value.shape)} does not fit the model's {tuple(target.shape)}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    return set(tensors)
