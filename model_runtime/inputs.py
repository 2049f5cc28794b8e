"""The tensor-level description of one media item, shared by processing, the model and the engine.

`MediaInput` is what host-side processing produces for an item (tensors + its exact token count,
known before the model runs); `EncodedItem` is what the model's encoders turn it into.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model_runtime.constants import SENTINEL_BY_MODALITY


@dataclass(frozen=True)
class MediaInput:
    """One preprocessed media item of a request."""

    modality: str  # "image" | "video" | "audio"
    data: torch.Tensor  # image: [k, 3, S, S] crops (k = 1 + nw*nh for anyres); video: [F, 3, S, S] frames;
    # audio: [C, n_mels, 3000] log-mel of C 30 s chunks (the last one padded with silence)
    num_tokens: int  # feature rows this item becomes in the LM sequence (layout.py)
    image_size: tuple[int, int] | None = None  # source (W, H) of an image or a video's frames
    single_crop: bool = False  # image processed as one crop (multi-image requests) instead of anyres
    timestamps: tuple[float, ...] = ()  # seconds of each sampled video frame
    duration: float | None = None  # seconds of a video or audio source
    num_samples: int = 0  # audio: 16 kHz samples of real audio (fixes the last chunk's real frames)

    @property
    def sentinel(self) -> int:
        return SENTINEL_BY_MODALITY[self.modality]


@dataclass(frozen=True)
class EncodedItem:
    """Feature rows of one media item, ready to splice."""

    modality: str  # "image" | "video" | "audio"
    features: torch.Tensor  # [n, D]

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]

    @property
    def sentinel(self) -> int:
        return SENTINEL_BY_MODALITY[self.modality]
