"""LlavaConfig: every key of spec section 2 parsed with ORIG's defaults, validated, tower dims offline."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import CLIPVisionConfig

from model_runtime.config import KNOWN_CLIP_TOWERS, ConfigError, LlavaConfig
from model_runtime.config import errors as config_errors

MINIMAL = {"architectures": ["LlavaQwenForCausalLM"], "hidden_size": 64, "mm_vision_tower": "google/siglip-so400m-patch14-384"}


def parse(**overrides) -> LlavaConfig:
    return LlavaConfig.from_dict({**MINIMAL, **overrides})


def test_absent_keys_take_orig_inference_defaults():
    cfg = parse()
    expected = {
        "mm_projector_type": "linear", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_resampler_type": None, "image_aspect_ratio": "square", "image_grid_pinpoints": (),
        "mm_patch_merge_type": "flat", "mm_use_im_start_end": False, "mm_use_im_patch_token": True,
        "mm_newline_position": "one_token", "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": None,
        "add_faster_video": False, "faster_token_stride": 10, "frames_upbound": 0, "video_fps": 1,
        "force_sample": False, "add_time_instruction": False, "tokenizer_model_max_length": None,
        "tokenizer_padding_side": "right", "use_pos_skipping": False, "pos_skipping_range": 4096,
        "rope_scaling": None,
    }
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.vision.kind == "siglip" and cfg.vision.num_hidden_layers == 27 and cfg.mm_hidden_size == 1152


def test_present_keys_are_read():
    cfg = parse(mm_projector_type="mlp2x_res2x_gelu", mm_newline_position="grid", mm_spatial_pool_mode="average",
                mm_spatial_pool_stride=2, add_faster_video=True, faster_token_stride=4, frames_upbound=64,
                video_fps=2, force_sample=True, add_time_instruction=True, tokenizer_model_max_length=32768,
                tokenizer_padding_side="left", use_pos_skipping=True, pos_skipping_range=100,
                mm_use_im_patch_token=False, mm_resampler_type="spatial_pool", image_token_index=151646)
    assert (cfg.mm_projector_type, cfg.mm_newline_position, cfg.mm_spatial_pool_mode) == (
        "mlp2x_res2x_gelu", "grid", "average")
    assert (cfg.mm_spatial_pool_stride, cfg.faster_token_stride, cfg.frames_upbound, cfg.video_fps) == (2, 4, 64, 2)
    assert cfg.add_faster_video and cfg.force_sample and cfg.add_time_instruction and cfg.use_pos_skipping
    assert (cfg.tokenizer_model_max_length, cfg.tokenizer_padding_side, cfg.pos_skipping_range) == (32768, "left", 100)
    assert cfg.mm_use_im_patch_token is False and cfg.mm_resampler_type == "spatial_pool"


def test_missing_pool_mode_uses_bilinear_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(config_errors, "_logged_once", set())
    with caplog.at_level(logging.WARNING, logger="model_runtime.config"):
        assert parse().mm_spatial_pool_mode == "bilinear"
        parse()
        parse(mm_spatial_pool_mode="average")
    assert [r.getMessage() for r in caplog.records].count(
        "config has no mm_spatial_pool_mode: videos use the training default 'bilinear' "
        "(ORIG would fail on the first video)") == 1


@pytest.mark.parametrize(("raw", "language"), [
    ({"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava"}, "qwen2"),
    ({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava"}, "llama"),
    ({"architectures": ["LlavaMistralForCausalLM"]}, "mistral"),
    ({"model_type": "llava_llama"}, "llama"),
])
def test_language_from_architectures_first(raw, language):
    assert LlavaConfig.from_dict({"hidden_size": 8, "mm_vision_tower": "x-siglip", **raw}).language == language


def test_model_type_llava_alone_is_not_resolved():
    with pytest.raises(ConfigError, match="cannot tell the language model"):
        LlavaConfig.from_dict({"model_type": "llava", "hidden_size": 8, "mm_vision_tower": "google/siglip-so400m-patch14-384"})


def test_rope_scaling_kept_for_llama_dropped_for_qwen():
    scaling = {"type": "linear", "factor": 2.0}
    assert parse(rope_scaling=scaling).rope_scaling is None
    assert parse(architectures=["LlavaLlamaForCausalLM"], rope_scaling=scaling).rope_scaling == scaling


@pytest.mark.parametrize("name", sorted(KNOWN_CLIP_TOWERS))
def test_known_clip_towers_need_no_hub(name):
    cfg = parse(mm_vision_tower=name)
    side = 336 if name.endswith("336") else 224
    assert (cfg.vision.kind, cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.image_size) == (
        "clip", 1024, 24, side)
    assert cfg.vision.num_patches_per_side == side // 14 and cfg.vision.hidden_act == "quick_gelu"
    assert cfg.mm_hidden_size == 1024


def test_local_tower_folder_is_read_with_transformers(tmp_path):
    CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
                     image_size=56, patch_size=14).save_pretrained(tmp_path)
    cfg = parse(mm_vision_tower=str(tmp_path))
    assert (cfg.vision.kind, cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.image_size) == (
        "clip", 48, 5, 56)


def test_local_folder_that_is_not_a_tower_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="CLIP or SigLIP"):
        parse(mm_vision_tower=str(tmp_path))


@pytest.mark.parametrize(("feature", "layer", "layers"), [
    ("patch", -2, (-2,)),
    ("cls_patch", -1, (-1,)),
    ("slicefour_patch", -2, (4, 10, 16, 22)),  # every len(hidden_states)//4 = 6 from 6 - 2
    ("slicefour_cls_patch", -1, (5, 11, 17, 23)),
    ("slice_m25811_f6_patch", -2, (-2, -5, -8, -11, 6)),
])
def test_clip_select_features_set_the_feature_width(feature, layer, layers):
    cfg = parse(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_feature=feature,
                mm_vision_select_layer=layer, mm_hidden_size=1024 * len(layers))
    assert cfg.clip_feature_layers == layers
    assert cfg.has_cls_token == ("cls" in feature)
    with pytest.raises(ConfigError, match="mm_hidden_size"):
        parse(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_feature=feature,
              mm_vision_select_layer=layer, mm_hidden_size=1024 * len(layers) + 1)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"mm_projector_type": "mlp2x_relu"}, "mm_projector_type"),
    ({"mm_projector_type": "mlp0x_gelu"}, "mm_projector_type"),
    ({"mm_projector_type": "identity"}, "identity"),
    ({"image_aspect_ratio": "highres"}, "image_aspect_ratio"),
    ({"image_aspect_ratio": "anyres_max_0", "image_grid_pinpoints": [[384, 384]]}, "image_aspect_ratio"),
    ({"image_aspect_ratio": "anyres"}, "image_grid_pinpoints"),
    ({"mm_newline_position": "row"}, "mm_newline_position"),
    ({"mm_spatial_pool_mode": "conv"}, "mm_spatial_pool_mode"),
    ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature"),
    ({"tokenizer_padding_side": "middle"}, "tokenizer_padding_side"),
    ({"mm_resampler_type": "unknown"}, "mm_resampler_type"),
    ({"faster_token_stride": 0}, "faster_token_stride"),
    ({"s2": True}, "s2"),
    ({"mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_hidden_size": 1024}, "mm_hidden_size"),
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -30}, "mm_vision_select_layer"),
    ({"mm_vision_tower_config": {"kind": "clip", "hidden_size": 8}}, "incomplete"),
    ({"mm_vision_tower_config": {"kind": "eva"}}, "kind"),
])
def test_invalid_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        parse(**overrides)


@pytest.mark.parametrize("overrides", [
    {"mm_projector_type": "pooler"},
    {"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_feature": "cls_patch"},
])
def test_spatial_anyres_needs_a_square_patch_map(overrides):
    anyres = {"image_aspect_ratio": "anyres", "image_grid_pinpoints": [[336, 672]], "mm_patch_merge_type": "spatial_unpad"}
    with pytest.raises(ConfigError, match="square P x P"):
        parse(**anyres, **overrides)
    assert parse(**{**anyres, "mm_patch_merge_type": "flat"}, **overrides).mm_patch_merge_type == "flat"
