"""Image preprocessing against transformers' PIL processors on integer-valued images: CLIP's
shortest-edge resize + centre crop, OneVision (SigLIP) and LLaVA-NeXT (CLIP) anyres crops, and
pad mode's mean-colour canvas. Sizes avoid the known HF/ORIG divergences (spec 10.3 items 2, 3, 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from model_runtime.config import LlavaConfig
from model_runtime.processing.image import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from tests.conftest import random_image

PINPOINTS = [[42, 42], [42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]  # (w, h)
SWAPPED = [[h, w] for w, h in PINPOINTS]
TOWER = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 42,
         "patch_size": 14, "hidden_size": 32}


def config(kind: str, aspect: str) -> LlavaConfig:
    return LlavaConfig.from_dict({
        "architectures": ["LlavaQwenForCausalLM"], "hidden_size": 64,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336" if kind == "clip" else "google/siglip",
        "mm_vision_tower_config": {"kind": kind, **TOWER}, "image_aspect_ratio": aspect,
        "image_grid_pinpoints": PINPOINTS,
    })


SIZES = [(50, 30), (30, 50), (42, 42), (100, 43), (17, 9), (130, 61)]


@pytest.mark.parametrize("size", SIZES)
def test_clip_square_mode_matches_clip_image_processor(size):
    image = random_image(*size, seed=size[0])
    ours = ImagePreprocessor(config("clip", "square")).process(image, single_crop=False)
    hf = CLIPImageProcessorPil(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42})
    theirs = hf(image, return_tensors="pt").pixel_values
    assert ours.shape == (1, 3, 42, 42)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_onevision_anyres_matches_transformers(size):
    image = random_image(*size, seed=size[1])
    ours = ImagePreprocessor(config("siglip", "anyres_max_1")).process(image, single_crop=False)
    hf = LlavaOnevisionImageProcessorPil(size={"height": 42, "width": 42}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, image_grid_pinpoints=SWAPPED)
    out = hf(image, return_tensors="pt")
    assert out["image_sizes"].tolist() == [[size[1], size[0]]]
    torch.testing.assert_close(ours, out["pixel_values"][0, : ours.shape[0]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_llava_next_clip_anyres_matches_transformers(size):
    image = random_image(*size, seed=size[0] + size[1])
    ours = ImagePreprocessor(config("clip", "anyres")).process(image, single_crop=False)
    hf = LlavaNextImageProcessorPil(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42},
                                    image_grid_pinpoints=SWAPPED)
    theirs = hf(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape[0] > 1
    torch.testing.assert_close(ours, theirs[: ours.shape[0]], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "fill"), [("clip", (122, 116, 104)), ("siglip", (127, 127, 127))])
def test_pad_mode_letterboxes_with_the_processor_mean_colour(kind, fill):
    image = random_image(40, 10, seed=1)  # pasted at rows 15..24 of a 40 x 40 canvas, then resized to 42
    pre = ImagePreprocessor(config(kind, "pad"))
    crop = pre.process(image, single_crop=False)
    assert crop.shape == (1, 3, 42, 42)
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else ((0.5,) * 3, (0.5,) * 3)
    expected = (np.asarray(fill, dtype=np.float32) / 255 - np.asarray(mean, dtype=np.float32)) / np.asarray(std)
    corner = crop[0, :, 0, 0].numpy()
    np.testing.assert_allclose(corner, expected, atol=1e-5)
    # multi-image requests take the same single padded crop
    torch.testing.assert_close(pre.process(image, single_crop=True), crop)


def test_frames_use_the_tower_processor():
    frames = [random_image(60, 30, seed=s) for s in range(3)]
    pre = ImagePreprocessor(config("clip", "anyres"))
    batch = pre.to_tensor(frames)
    assert batch.shape == (3, 3, 42, 42)
    torch.testing.assert_close(batch[1:2], pre.square(frames[1]))
