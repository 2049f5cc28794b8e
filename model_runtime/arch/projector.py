"""Multimodal projectors Cv -> D (ORIG llava/model/multimodal_projector/builder.py) and the
audio projector Ca -> D (EgoGPT speech_projector, spec 11.1).

Parameter names follow ORIG's nn.Sequential indices (`0`, `2`, ...) so `model.mm_projector.*`
keys load unchanged.
"""

from __future__ import annotations

import re

import torch
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


class SpeechProjector(nn.Module):
    """Concat-k MLP (EgoGPT speech_projector, after SLAM-LLM): k consecutive encoder frames are
    concatenated, then Linear(k*Ca, H) -> ReLU -> Linear(H, D). Keys `model.speech_projector.linear1/2`."""

    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        audio = cfg.audio
        if audio is None:
            raise ValueError("the checkpoint has no audio tower (no speech_encoder key)")
        self.k = audio.speech_encoder_ds_rate
        self.linear1 = nn.Linear(audio.hidden_size * self.k, audio.speech_projector_hidden_size)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(audio.speech_projector_hidden_size, cfg.hidden_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: [C, T, Ca] -> [C, T // k, D]; trailing T % k frames are dropped
        c, t, ca = frames.shape
        usable = t - t % self.k
        grouped = frames[:, :usable].reshape(c, usable // self.k, ca * self.k)
        return self.linear2(self.relu(self.linear1(grouped)))
