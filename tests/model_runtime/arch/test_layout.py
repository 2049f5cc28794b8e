"""Token counts against the worked values of the spec (section 5) and ORIG's pinpoint rules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from model_runtime.arch.layout import (
    LayoutError,
    anyres_grid,
    anyres_max_shape,
    image_token_count,
    image_token_parts,
    pooled_side,
    select_best_resolution,
    tokens_per_crop,
    video_pool_sides,
    video_token_count,
)
from model_runtime.config import ConfigError, LlavaConfig, parse_pinpoints


def ov_config(**overrides) -> LlavaConfig:
    raw = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava", "hidden_size": 896,
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_hidden_size": 1152,
        "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": "(1x1),...,(6x6)",
        "mm_patch_merge_type": "spatial_unpad", "mm_projector_type": "mlp2x_gelu",
    }
    raw.update(overrides)
    return LlavaConfig.from_dict(raw)


def v16_config(**overrides) -> LlavaConfig:
    # the CLIP tower's dimensions come from the built-in table: no hub, no extension key
    raw = {
        "architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 4096,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
        "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    }
    raw.update(overrides)
    return LlavaConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("size", "grid", "tokens"),
    [
        ((1024, 899), (3, 3), 6551),
        ((899, 1024), (3, 3), 6561),
        ((640, 480), (2, 2), 2929),
        ((384, 384), (1, 1), 1485),
        ((100, 100), (1, 1), 1485),
        ((2304, 2304), (6, 6), 7371),
    ],
)
def test_onevision_worked_values(size, grid, tokens):
    cfg = ov_config()
    assert anyres_grid(cfg, size) == grid
    assert image_token_count(cfg, size) == tokens


def test_onevision_multi_image_pad_item_is_one_crop_plus_newline():
    assert image_token_count(ov_config(), (1024, 899), single_crop=True) == 730


@pytest.mark.parametrize(("size", "tokens"), [((1024, 899), 2634), ((640, 480), 2340)])
def test_llava_v16_worked_values(size, tokens):
    assert image_token_count(v16_config(), size) == tokens


def test_range_pinpoints_expand_outer_loop_first():
    pairs = parse_pinpoints("(1x1),...,(6x6)", 384)
    assert len(pairs) == 36
    assert pairs[:3] == ((384, 384), (384, 768), (384, 1152))
    assert pairs[-1] == (2304, 2304)
    # only the first and last groups count: a rectangle
    assert parse_pinpoints("(1x2),(9x9),(2x3)", 336) == ((336, 672), (336, 1008), (672, 672), (672, 1008))


def test_range_pinpoints_need_a_known_crop_side():
    with pytest.raises(ConfigError, match="range syntax"):
        parse_pinpoints("(1x1),...,(2x2)", 42)


def test_select_best_resolution_keeps_earlier_on_exact_ties():
    # a 300x300 image fits 336x672 and 672x336 equally: ORIG keeps the first listed
    assert select_best_resolution((300, 300), [(336, 672), (672, 336)]) == (336, 672)
    assert select_best_resolution((300, 300), [(672, 336), (336, 672)]) == (672, 336)


def test_flat_and_square_counts():
    assert image_token_count(ov_config(mm_patch_merge_type="flat"), (640, 480)) == 5 * 729
    assert image_token_count(ov_config(image_aspect_ratio="square"), (640, 480)) == 730
    assert image_token_count(ov_config(image_aspect_ratio="pad", mm_patch_merge_type="flat"), (10, 10)) == 729


def test_empty_image_side_is_an_error_not_a_2x2_fallback():
    with pytest.raises(LayoutError):
        anyres_grid(ov_config(), (0, 10))


def test_config_refuses_unknown_merge_type():
    with pytest.raises(ConfigError, match="mm_patch_merge_type"):
        ov_config(mm_patch_merge_type="spatial_sideways")


# -- videos (spec 4.3-4.4 and the worked values of section 5) -----------------------------------
def test_onevision_video_worked_value():
    cfg = ov_config(mm_newline_position="one_token", mm_spatial_pool_mode="bilinear")
    assert video_token_count(cfg, 32) == 32 * 196 + 1 == 6273


def test_faster_video_worked_value():
    cfg = ov_config(mm_newline_position="grid", mm_spatial_pool_mode="average", mm_spatial_pool_stride=2,
                    add_faster_video=True, faster_token_stride=10)
    assert video_pool_sides(cfg) == (13, 6)
    assert video_token_count(cfg, 64) == 7 * 183 + 57 * 43 == 3732


@pytest.mark.parametrize(("mode", "side"), [("bilinear", 14), ("average", 13), ("max", 13)])
def test_video_pooling_rounds_per_mode(mode, side):
    cfg = ov_config(mm_spatial_pool_mode=mode, mm_newline_position="no_token")
    assert pooled_side(27, 2, mode) == side
    assert video_token_count(cfg, 5) == 5 * side * side


@pytest.mark.parametrize(
    ("merge", "position", "tokens"),
    [
        ("spatial_unpad", "one_token", 3 * 144 + 1),
        ("spatial", "one_token", 3 * 144),  # no image_newline without unpad
        ("spatial_unpad", "no_token", 3 * 144),
        ("spatial_unpad", "frame", 3 * 145),
        ("spatial_unpad", "grid", 3 * 12 * 13),
        ("flat", "grid", 3 * 144),  # flat ignores the newline position
    ],
)
def test_video_newline_positions(merge, position, tokens):
    cfg = v16_config(mm_patch_merge_type=merge, mm_newline_position=position, mm_spatial_pool_mode="average")
    assert video_token_count(cfg, 3) == tokens


def test_faster_video_only_with_grid_newlines_as_orig():
    cfg = ov_config(mm_newline_position="one_token", add_faster_video=True, mm_spatial_pool_mode="average")
    assert not cfg.is_faster_video
    assert video_token_count(cfg, 4) == 4 * 169 + 1


def test_video_layouts_orig_cannot_build_are_refused():
    with pytest.raises(LayoutError, match="image_newline"):
        video_token_count(v16_config(mm_patch_merge_type="spatial", mm_newline_position="grid"), 2)
    with pytest.raises(LayoutError, match="P x P"):
        video_token_count(v16_config(image_aspect_ratio="pad", mm_projector_type="pooler"), 2)
    with pytest.raises(LayoutError, match="at least one frame"):
        video_token_count(ov_config(), 0)


# -- CLIP select features and the pooler projector change tokens per crop ------------------------
def test_clip_cls_patch_and_pooler_tokens_per_crop():
    cls = v16_config(image_aspect_ratio="pad", mm_vision_select_feature="cls_patch", mm_patch_merge_type="flat")
    assert tokens_per_crop(cls) == 577
    assert image_token_count(cls, (640, 480)) == 577
    pooler = v16_config(image_aspect_ratio="pad", mm_projector_type="pooler", mm_patch_merge_type="spatial_unpad")
    assert tokens_per_crop(pooler) == 144
    assert image_token_count(pooler, (640, 480)) == 145
    flat_anyres = v16_config(mm_projector_type="pooler", mm_patch_merge_type="flat")
    assert image_token_count(flat_anyres, (640, 480)) == 5 * 144


@pytest.mark.parametrize(("merge", "tokens"), [
    ("spatial", 576 + 48 * 48), ("spatial_nobase", 48 * 48), ("spatial_maxpool2x2", 576 + 24 * 24),
    ("spatial_unpad_nobase", 2340 - 576),
])
def test_v16_merge_variants(merge, tokens):
    assert image_token_count(v16_config(mm_patch_merge_type=merge), (640, 480)) == tokens


def test_docs_token_table_is_what_layout_computes():
    root = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("token_table", root / "bench" / "token_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.markdown()
    assert "| LLaVA-OneVision (Qwen2) | video, 32 frames | 6273 |" in table  # spec 5's worked value
    assert table in (root / "docs" / "MODEL.md").read_text()


def test_anyres_max_cap_that_would_empty_a_side_is_an_error():
    assert anyres_max_shape(6, 6, 1, 9) == (3, 3)
    with pytest.raises(LayoutError, match="losing a side"):
        anyres_max_shape(1, 60, 1, 9)  # t = sqrt(60 / 9) > 1: int(1 // t) == 0


# -- the parts of an image's tokens (the media report's drawing) ---------------------------------
SIZES = [(640, 480), (480, 640), (1024, 899), (100, 100), (2304, 2304), (3000, 200), (200, 3000), (1, 1), (777, 333)]


@pytest.mark.parametrize("cfg", [
    ov_config(), v16_config(), v16_config(mm_patch_merge_type="spatial"), v16_config(mm_patch_merge_type="flat"),
    v16_config(mm_patch_merge_type="spatial_nobase"), v16_config(mm_patch_merge_type="spatial_maxpool2x2"),
    v16_config(mm_patch_merge_type="spatial_unpad_nobase"), v16_config(image_aspect_ratio="pad"),
    ov_config(image_aspect_ratio="anyres_max_1"),
], ids=["ov", "v16", "spatial", "flat", "nobase", "maxpool", "unpad_nobase", "pad", "ov_max1"])
@pytest.mark.parametrize("single_crop", [False, True])
def test_image_token_parts_sum_to_the_count(cfg, single_crop):
    for size in SIZES:
        parts = image_token_parts(cfg, size, single_crop)
        assert parts.num_tokens == image_token_count(cfg, size, single_crop), size
        if parts.grid is not None:
            nw, nh = parts.grid
            assert len(parts.crop_tokens) == nh and all(len(row) == nw for row in parts.crop_tokens)
            assert parts.resolution == (nw * cfg.vision.image_size, nh * cfg.vision.image_size)
            assert all(n >= 0 for row in parts.crop_tokens for n in row)


def test_image_token_parts_worked_values():
    # OneVision, 640x480 in a 2x2 grid of 27x27 patches: unpad keeps rows 7..47 of 54 (no cap at 9 crops),
    # 20 of each crop row's 27, plus one newline per kept row: 729 + 4 * 540 + 40 = 2929
    parts = image_token_parts(ov_config(), (640, 480))
    assert (parts.base_tokens, parts.grid, parts.resolution) == (729, (2, 2), (768, 768))
    assert parts.crop_tokens == ((20 * 27, 20 * 27), (20 * 27, 20 * 27)) and parts.newline_tokens == 40
    one = image_token_parts(ov_config(), (100, 100), single_crop=True)  # one crop and its newline
    assert (one.base_tokens, one.grid, one.crop_tokens, one.newline_tokens) == (729, None, (), 1)
    capped = image_token_parts(ov_config(), (2304, 2304))  # 162x162 patches capped to 81x81: 13 or 14 each way
    assert capped.grid == (6, 6) and {n for row in capped.crop_tokens for n in row} == {13 * 13, 13 * 14, 14 * 14}
    assert capped.newline_tokens == 81
    flat = image_token_parts(v16_config(mm_patch_merge_type="flat"), (640, 480))
    assert flat.crop_tokens == ((576, 576), (576, 576)) and flat.newline_tokens == 0
