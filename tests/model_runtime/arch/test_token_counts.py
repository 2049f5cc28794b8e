"""Property: for every merge / aspect / video mode, the rows the model builds == the tokens counted
before it runs (layout.py), over hundreds of random image sizes and random frame counts."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from model_runtime.arch import layout
from model_runtime.config import MERGE_TYPES
from model_runtime.inputs import MediaInput
from model_runtime.processing.image import ImagePreprocessor
from tests.model_runtime.arch.conftest import TINY_CLIP

ASPECTS = ["anyres_max_1", "anyres", "pad", "square"]


def random_sizes(seed: int, n: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.4:
            sizes.append((rng.randint(1, 130), rng.randint(1, 130)))
        elif roll < 0.7:
            sizes.append((rng.randint(1, 700), rng.randint(1, 700)))
        else:  # extreme aspect ratios (unpad can leave very few rows)
            long, short = rng.randint(100, 900), rng.randint(1, 12)
            sizes.append((long, short) if rng.random() < 0.5 else (short, long))
    return sizes


def check_images(model, sizes, single_crop: bool) -> int:
    cfg = model.llava_config
    pre = ImagePreprocessor(cfg)
    media = []
    for w, h in sizes:
        image = Image.new("RGB", (w, h), (w % 256, h % 256, 90))
        data = pre.process(image, single_crop)
        count = layout.image_token_count(cfg, (w, h), single_crop=single_crop)
        media.append(MediaInput("image", data, count, image_size=(w, h), single_crop=single_crop))
    with torch.inference_mode():
        rows = model.encode_visual_items(media)
    for m, r in zip(media, rows, strict=True):
        assert r.shape == (m.num_tokens, cfg.hidden_size), (cfg.mm_patch_merge_type, cfg.image_aspect_ratio, m.image_size)
    return len(media)


@pytest.mark.parametrize("merge", MERGE_TYPES)
def test_image_rows_equal_counted_tokens(build_model, merge):
    num_checked = 0
    for i, aspect in enumerate(ASPECTS):
        model = build_model(mm_patch_merge_type=merge, image_aspect_ratio=aspect)
        sizes = random_sizes(seed=10 * MERGE_TYPES.index(merge) + i, n=100 if aspect.startswith("anyres") else 25)
        num_checked += check_images(model, sizes, single_crop=False)
        num_checked += check_images(model, sizes[:10], single_crop=True)
    assert num_checked == 2 * 100 + 2 * 25 + 4 * 10


@pytest.mark.parametrize("overrides", [
    {"mm_projector_type": "pooler", "mm_patch_merge_type": "flat"},
    {"mm_projector_type": "pooler", "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "pad"},
    {"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_tower_config": TINY_CLIP,
     "mm_hidden_size": 32, "mm_vision_select_feature": "cls_patch", "mm_patch_merge_type": "flat"},
    {"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_tower_config": TINY_CLIP,
     "mm_hidden_size": 32, "image_aspect_ratio": "anyres"},
], ids=["pooler-flat", "pooler-pad", "clip-cls-flat", "clip-anyres"])
def test_image_rows_for_other_towers_and_projectors(build_model, overrides):
    model = build_model(**overrides)
    assert check_images(model, random_sizes(seed=5, n=60), single_crop=False) == 60


VIDEO_MODES = [
    {"mm_patch_merge_type": merge, "mm_newline_position": position, "mm_spatial_pool_mode": mode}
    for merge in ("flat", "spatial_unpad", "spatial")
    for position in ("one_token", "no_token", "frame", "grid")
    for mode in ("average", "max", "bilinear")
    if "unpad" in merge or position in ("one_token", "no_token") or merge == "flat"
] + [
    {"mm_patch_merge_type": "spatial_unpad", "mm_newline_position": "grid", "mm_spatial_pool_mode": mode,
     "add_faster_video": True, "mm_spatial_pool_stride": 1, "faster_token_stride": stride}
    for mode in ("average", "bilinear") for stride in (1, 3)
]


def test_video_rows_equal_counted_tokens(build_model):
    rng = random.Random(0)
    for modes in VIDEO_MODES:
        model = build_model(**modes)
        cfg = model.llava_config
        media = []
        for _ in range(3):
            num_frames = rng.randint(1, 12)
            frames = torch.randn(num_frames, 3, 42, 42)
            media.append(MediaInput("video", frames, layout.video_token_count(cfg, num_frames)))
        with torch.inference_mode():
            items = model.encode_media(media)
        for m, item in zip(media, items, strict=True):
            assert item.features.shape == (m.num_tokens, cfg.hidden_size), modes
