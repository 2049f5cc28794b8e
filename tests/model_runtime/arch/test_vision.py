"""Vision towers: CLIP's select layer / select feature variants and SigLIP's dropped last layer,
against transformers' own hidden_states of the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from model_runtime.arch.vision import build_vision_tower
from model_runtime.config import LlavaConfig

CLIP = {"kind": "clip", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 12,
        "num_attention_heads": 2, "image_size": 28, "patch_size": 14}


def clip_config(feature: str, layer: int) -> LlavaConfig:
    return LlavaConfig.from_dict({
        "architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 16, "mm_vision_tower": "openai/clip-vit-large-patch14",
        "mm_vision_tower_config": CLIP, "mm_vision_select_feature": feature, "mm_vision_select_layer": layer,
    })


@pytest.mark.parametrize(("feature", "layer", "layers", "keeps_cls"), [
    ("patch", -2, [-2], False),
    ("patch", 3, [3], False),
    ("cls_patch", -1, [-1], True),
    ("slicefour_patch", -2, [1, 4, 7, 10], False),  # 13 hidden states: every 3rd from 3 - 2
    ("slicefour_cls_patch", -1, [2, 5, 8, 11], True),
    ("slice_m25811_f6_patch", -2, [-2, -5, -8, -11, 6], False),
    ("slice_m25811_f6_cls_patch", -2, [-2, -5, -8, -11, 6], True),
])
def test_clip_select_features_match_transformers_hidden_states(feature, layer, layers, keeps_cls):
    cfg = clip_config(feature, layer)
    torch.manual_seed(0)
    tower = build_vision_tower(cfg).eval()
    pixels = torch.randn(3, 3, 28, 28)
    with torch.inference_mode():
        ours = tower(pixels)
        states = tower.vision_tower.vision_model(pixels, output_hidden_states=True).hidden_states
    assert len(states) == 13
    expected = torch.cat([states[i] for i in layers], dim=-1)
    if not keeps_cls:
        expected = expected[:, 1:]
    assert ours.shape == (3, 4 + keeps_cls, 8 * len(layers)) == (3, 4 + keeps_cls, cfg.mm_hidden_size)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)


def test_clip_keys_follow_orig_layout():
    keys = set(build_vision_tower(clip_config("patch", -2)).state_dict())
    assert "vision_tower.vision_model.embeddings.class_embedding" in keys
    assert "vision_tower.vision_model.pre_layrnorm.weight" in keys
    assert "vision_tower.vision_model.encoder.layers.11.mlp.fc2.bias" in keys  # all layers are kept


def test_siglip_drops_the_last_layer_and_skips_post_layernorm():
    cfg = LlavaConfig.from_dict({
        "architectures": ["LlavaQwenForCausalLM"], "hidden_size": 16, "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_vision_tower_config": {"kind": "siglip", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 3,
                                   "num_attention_heads": 2, "image_size": 42, "patch_size": 14},
        "mm_vision_select_layer": -1, "mm_vision_select_feature": "cls_patch",  # ignored by SigLIP (ORIG)
    })
    torch.manual_seed(0)
    tower = build_vision_tower(cfg).eval()
    published = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2, image_size=42, patch_size=14,
        vision_use_head=False, attn_implementation="eager")).eval()
    missing, unexpected = published.load_state_dict(
        {k.removeprefix("vision_tower.vision_model."): v for k, v in tower.state_dict().items()}, strict=False)
    assert not unexpected and all(".layers.2." in k for k in missing)  # only the dropped layer differs
    pixels = torch.randn(2, 3, 42, 42)
    with torch.inference_mode():
        ours = tower(pixels)
        states = published(pixels, output_hidden_states=True).hidden_states
    assert ours.shape == (2, 9, 8)
    torch.testing.assert_close(ours, states[-2], atol=1e-6, rtol=1e-6)


def test_towers_return_the_pixel_dtype():
    tower = build_vision_tower(clip_config("patch", -2)).eval()
    with torch.inference_mode():
        assert tower(torch.randn(1, 3, 28, 28, dtype=torch.float64)).dtype == torch.float64
