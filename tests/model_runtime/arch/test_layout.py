"""Token counts against the worked values of the spec (section 5) and ORIG's pinpoint rules."""

from __future__ import annotations

import pytest

from model_runtime.arch.layout import LayoutError, anyres_grid, image_token_count, select_best_resolution
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


def v16_config() -> LlavaConfig:
    return LlavaConfig.from_dict({
        "architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 4096,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
        "mm_vision_tower_config": {"kind": "clip", "hidden_size": 1024, "intermediate_size": 4096,
                                   "num_hidden_layers": 24, "num_attention_heads": 16,
                                   "image_size": 336, "patch_size": 14},
        "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    })


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
