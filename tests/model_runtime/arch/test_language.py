"""Language model classes: Qwen2 / Llama / Mistral chosen from the config, ORIG weight names
loaded from a checkpoint (CLIP tower, faster_token), rope_scaling kept for Llama only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model_runtime import load_pretrained_model
from model_runtime.arch.language import (
    LANGUAGE_MODELS,
    LlavaLlamaForCausalLM,
    LlavaMistralForCausalLM,
    LlavaQwenForCausalLM,
)
from model_runtime.checkpoint_tools import make_demo
from model_runtime.constants import IMAGE_TOKEN_INDEX
from model_runtime.inputs import MediaInput
from tests.conftest import random_image
from tests.model_runtime.arch.conftest import TINY_CLIP

LINEAR_X2 = {"type": "linear", "factor": 2.0}


def test_registry_covers_every_language():
    assert {k: v[1] for k, v in LANGUAGE_MODELS.items()} == {
        "qwen2": LlavaQwenForCausalLM, "llama": LlavaLlamaForCausalLM, "mistral": LlavaMistralForCausalLM}


def last_logits(model, length: int = 12) -> torch.Tensor:
    ids = torch.arange(3, 3 + length)[None]
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1]


def test_llama_keeps_rope_scaling_qwen_drops_it(build_model):
    llama = build_model(architectures=["LlavaLlamaForCausalLM"], rope_scaling=LINEAR_X2)
    plain = build_model(architectures=["LlavaLlamaForCausalLM"])
    assert llama.config.rope_parameters["rope_type"] == "linear" and llama.config.rope_parameters["factor"] == 2.0
    assert not torch.allclose(last_logits(llama), last_logits(plain), atol=1e-4)  # same weights, scaled positions
    qwen = build_model(rope_scaling=LINEAR_X2)
    assert qwen.config.rope_parameters["rope_type"] == "default"
    torch.testing.assert_close(last_logits(qwen), last_logits(build_model()))


@pytest.fixture(scope="module")
def llama_clip_checkpoint(tmp_path_factory) -> Path:
    """LLaVA-1.6 / LLaVA-NeXT-Video shape: Llama LM, CLIP tower, SlowFast video with faster_token."""
    return make_demo("tiny", tmp_path_factory.mktemp("llama") / "ckpt", seed=3, overrides={
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "conversation_template": "chatml",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_tower_config": TINY_CLIP,
        "mm_hidden_size": 32, "rope_scaling": LINEAR_X2, "mm_newline_position": "grid",
        "add_faster_video": True, "mm_spatial_pool_stride": 1, "faster_token_stride": 2,
    })


def test_llama_clip_checkpoint_loads_every_orig_weight(llama_clip_checkpoint):
    loaded = load_pretrained_model(str(llama_clip_checkpoint), dtype="float32")
    model = loaded.model
    assert isinstance(model, LlavaLlamaForCausalLM) and loaded.config.vision.kind == "clip"
    ours = model.state_dict()
    with safe_open(llama_clip_checkpoint / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert keys == set(ours) and "model.faster_token" in keys
        for key in ("model.faster_token", "model.image_newline",
                    "model.vision_tower.vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight"):
            torch.testing.assert_close(ours[key], f.get_tensor(key))
    assert model.config.rope_parameters["factor"] == 2.0


def test_llama_clip_model_runs_images_and_videos(llama_clip_checkpoint):
    loaded = load_pretrained_model(str(llama_clip_checkpoint), dtype="float32")
    image = loaded.processor.process_image(random_image(90, 50), single_crop=False)
    frames = loaded.processor.images.to_tensor([random_image(40, 30, seed=s) for s in range(5)])
    # slow frames 0, 2, 4: 3x3 map + newlines = 12; fast frames 1, 3: 2x2 + newlines = 6; one faster_token each
    video = MediaInput("video", frames, 3 * 12 + 2 * 6 + 5)
    with torch.inference_mode():
        items = loaded.model.encode_media([image, video])
        embeds, mask, positions = loaded.model.prepare_inputs_for_multimodal(
            [[5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 7]], [items])
        logits = loaded.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    assert embeds.shape[1] == 3 + image.num_tokens + video.num_tokens
    assert torch.isfinite(logits).all()
    faster = loaded.model.model.faster_token
    rows = items[1].features
    for end in (12, 12 + 7, 12 + 7 + 13):  # the faster_token closes each frame
        torch.testing.assert_close(rows[end], faster)


def test_mistral_checkpoint_is_picked_from_the_config(tmp_path):
    checkpoint = make_demo("tiny", tmp_path / "mistral", seed=4, overrides={
        "architectures": ["LlavaMistralForCausalLM"], "conversation_template": "chatml", "sliding_window": None})
    loaded = load_pretrained_model(str(checkpoint), dtype="float32")
    assert isinstance(loaded.model, LlavaMistralForCausalLM)
    image = loaded.processor.process_image(random_image(60, 60), single_crop=False)
    with torch.inference_mode():
        items = loaded.model.encode_media([image])
        embeds, mask, pos = loaded.model.prepare_inputs_for_multimodal([[1, IMAGE_TOKEN_INDEX, 2]], [items])
        out = loaded.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits
    assert out.shape == (1, 2 + image.num_tokens, loaded.model.config.vocab_size)
