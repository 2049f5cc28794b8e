"""llava-hf checkpoints in and out: `export_hf` writes transformers' LlavaOnevision layout, the
loader reads it back (transformers 5 names and the 4.x hub names) with the same numerics as the
original, and transformers' own class loads the export with the same logits as ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_runtime import ChatTurn, ConfigError, load_pretrained_model
from model_runtime.checkpoint.hf_layout import orig_config
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.hf_export import export_hf
from server.cli import main
from tests.conftest import random_image
from tests.model_runtime.checkpoint.conftest import load_both, logit_gap

SIZES = ((160, 90), (37, 120), (300, 300))  # (w, h): wide, tall (extreme), square


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return make_demo("tiny", tmp_path_factory.mktemp("orig") / "ckpt", seed=3, audio=False)


@pytest.fixture(scope="module")
def exported(original, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "export"
    report = export_hf(original, out)
    assert report["left_out"]["tensors"] == 0
    return out


def logits_of(loaded, image_sizes) -> tuple[torch.Tensor, list[int]]:
    p = loaded.processor
    media = [p.process_image(random_image(w, h, seed=i), single_crop=len(image_sizes) > 1)
             for i, (w, h) in enumerate(image_sizes)]
    prompt = p.build_prompt([ChatTurn("user", "<image>\n" * len(media) + "What is shown?")], media)
    with torch.inference_mode():
        items = loaded.model.encode_media(media)
        embeds, mask, positions = loaded.model.prepare_inputs_for_multimodal([prompt.token_ids], [items])
        logits = loaded.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    return logits, [m.num_tokens for m in media]


def same_logits(a, b) -> None:
    la, na = a
    lb, nb = b
    assert na == nb  # the same token counts
    width = min(la.shape[-1], lb.shape[-1])
    assert la.shape[:-1] == lb.shape[:-1]
    assert torch.equal(la[..., :width], lb[..., :width])


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES[1:2], SIZES[2:], SIZES[:2]], ids=["wide", "tall", "square", "two"])
def test_export_then_load_gives_the_same_logits(original, exported, sizes):
    ours = load_pretrained_model(str(original), dtype="float32")
    back = load_pretrained_model(str(exported), dtype="float32")
    same_logits(logits_of(ours, sizes), logits_of(back, sizes))
    assert back.config.raw["llava_hf_layout"] == "llava_onevision"
    assert back.eos_token_ids == ours.eos_token_ids


def test_the_transformers_4_hub_names_load_too(original, exported, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(exported, legacy)
    renames = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower.vision_model."),
               ("model.multi_modal_projector.", "multi_modal_projector."), ("model.image_newline", "image_newline"))
    state = load_file(legacy / "model.safetensors")
    renamed = {}
    for key, tensor in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = tensor
    assert any(k.startswith("vision_tower.vision_model.") for k in renamed)
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})
    ours = load_pretrained_model(str(original), dtype="float32")
    same_logits(logits_of(ours, SIZES[:1]), logits_of(load_pretrained_model(str(legacy), dtype="float32"), SIZES[:1]))


def test_transformers_loads_the_export_with_our_logits(exported):
    from transformers import LlavaOnevisionForConditionalGeneration

    hf, ours = load_both(exported, LlavaOnevisionForConditionalGeneration)
    for size in SIZES:
        assert logit_gap(hf, ours, "image", size) <= 1e-4


def test_refusals_name_the_key():
    base = {"model_type": "llava_onevision", "text_config": {"model_type": "qwen2"},
            "vision_config": {"model_type": "siglip_vision_model"}}
    with pytest.raises(ConfigError, match="'video_llava' is not supported"):
        orig_config({**base, "model_type": "video_llava", "architectures": ["VideoLlavaForConditionalGeneration"]})
    with pytest.raises(ConfigError, match="vision_feature_select_strategy"):
        orig_config({**base, "vision_feature_select_strategy": "default"})
    with pytest.raises(ConfigError, match="only qwen2"):
        orig_config({**base, "text_config": {"model_type": "llama"}})
    with pytest.raises(ConfigError, match="vision_feature_layer"):
        orig_config({**base, "vision_feature_layer": -40})
    # F indexes hidden_states: -1 of M layers is what ORIG computes with M + 1 published layers
    assert orig_config(base)["mm_vision_tower_config"]["num_hidden_layers"] == 27
    assert orig_config({**base, "vision_feature_layer": -2})["mm_vision_tower_config"]["num_hidden_layers"] == 26


@pytest.mark.parametrize("language", ["llama", "mistral"])
def test_llava_next_loads_with_transformers_logits(original, tmp_path, language):
    """LLaVA-1.6's llava-hf shape (Llama or Mistral LM, CLIP layer -2 without CLS, anyres), saved by
    transformers itself; our loader serves it with transformers' logits."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        MistralConfig,
    )

    raw = json.loads((original / "config.json").read_text())
    text_cls = LlamaConfig if language == "llama" else MistralConfig
    text = text_cls(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
                    num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
                    num_key_value_heads=raw["num_key_value_heads"], rms_norm_eps=1e-5, max_position_embeddings=4096)
    pinpoints = [[42, 42], [42, 84], [84, 42], [84, 84]]  # [h, w]
    config = LlavaNextConfig(
        text_config=text,
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                       image_size=42, patch_size=14),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        image_token_index=raw["image_token_index"], projector_hidden_act="gelu", multimodal_projector_bias=True,
    )
    torch.manual_seed(4)
    folder = tmp_path / language
    LlavaNextForConditionalGeneration(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(original / name, folder / name)
    hf, loaded = load_both(folder, LlavaNextForConditionalGeneration)
    assert loaded.config.language == language and loaded.config.vision.kind == "clip"
    assert loaded.config.image_grid_pinpoints == ((42, 42), (84, 42), (42, 84), (84, 84))  # (w, h)
    for size in ((160, 90), (37, 120)):
        assert logit_gap(hf, loaded, "image", size) <= 1e-4


def test_cli_export_hf(original, tmp_path, capsys):
    out = tmp_path / "cli-export"
    assert main(["export-hf", str(original), str(out)]) == 0
    assert "llava-hf layout (LlavaOnevisionForConditionalGeneration," in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_onevision"
    assert main(["export-hf", str(original), str(out)]) == 2  # not empty: nothing written
    assert "is not empty" in capsys.readouterr().err


def test_an_audio_tower_is_kept_beside_the_export(tmp_path):
    src = make_demo("tiny", tmp_path / "av", seed=0, audio=True)
    report = export_hf(src, tmp_path / "out")
    assert report["left_out"]["tensors"] > 0
    side = load_file(tmp_path / "out" / "audio_tower.safetensors")
    assert side and all(k.startswith(("model.speech_encoder.", "model.speech_projector.")) for k in side)
    assert "audio tower" in (tmp_path / "out" / "README.md").read_text()
