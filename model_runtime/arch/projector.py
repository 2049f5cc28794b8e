"""Multimodal projectors Cv -> D (ORIG llava/model/multimodal_projector/{builder,pooler_projector}.py)
and the audio projector Ca -> D (EgoGPT speech_projector, spec 11.1).

Parameter names follow ORIG's modules (`0`, `2`, ... of an nn.Sequential; `pre_norm`/`proj.*` of
a residual block; `conv_pool`/`proj.1` of the pooler) so `model.mm_projector.*` keys load
unchanged. Every projector maps [N, T, Cv] -> [N, T', D]; only the pooler changes T
(P*P -> (P//2)^2).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from model_runtime.config import LlavaConfig


class SimpleResBlock(nn.Module):
    """x <- LayerNorm(x); x + Linear(GELU(Linear(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(channels)
        self.proj = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        return x + self.proj(x)


class PoolerProjector(nn.Module):
    """Tokens as a P x P map -> Conv2d(k=2, s=2) -> flatten -> GELU -> Linear: (P//2)^2 tokens per crop."""

    def __init__(self, in_channels: int, out_channels: int, num_patches_per_side: int) -> None:
        super().__init__()
        self.num_patches_per_side = num_patches_per_side
        self.conv_pool = nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.proj = nn.Sequential(nn.GELU(), nn.Linear(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, P*P, Cv] -> [N, (P//2)^2, D]
        p = self.num_patches_per_side
        if x.shape[1] != p * p:
            raise ValueError(f"pooler projector expects {p * p} tokens per crop, got {x.shape[1]}")
        x = x.view(x.shape[0], p, p, -1).permute(0, 3, 1, 2)
        x = self.conv_pool(x).flatten(2).transpose(1, 2)
        return self.proj(x)


def build_vision_projector(cfg: LlavaConfig) -> nn.Module:
    kind = cfg.mm_projector_type
    cv, d = cfg.mm_hidden_size, cfg.hidden_size
    if kind == "linear":
        return nn.Linear(cv, d)
    if kind == "identity":
        if cv != d:
            raise ValueError(f"mm_projector_type='identity' needs mm_hidden_size == hidden_size, got {cv} != {d}")
        return nn.Identity()
    if kind == "pooler":
        return PoolerProjector(cv, d, cfg.vision.num_patches_per_side)
    m = re.fullmatch(r"mlp(\d+)x(?:_res(\d+)x)?_gelu", kind)
    if m:
        layers: list[nn.Module] = [nn.Linear(cv, d)]
        for _ in range(int(m.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(d, d)]
        layers += [SimpleResBlock(d) for _ in range(int(m.group(2) or 0))]
        return nn.Sequential(*layers)
    raise ValueError(f"mm_projector_type={kind!r} is not supported")


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
