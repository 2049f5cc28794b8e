"""Demo checkpoints: ORIG layout, determinism, tokenizer coverage, realistic dimensions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from model_runtime import LlavaConfig
from model_runtime.checkpoint_tools import DEMO_SPECS, make_demo
from model_runtime.checkpoint_tools.demo import SPECIAL_TOKENS, build_tokenizer


def test_tiny_is_deterministic_and_in_orig_layout(tiny_checkpoint, tmp_path):
    again = make_demo("tiny", tmp_path / "again", seed=0)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (Path(tiny_checkpoint) / name).read_bytes() == (again / name).read_bytes(), name
    config = json.loads((again / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaQwenForCausalLM"]
    for key in ("mm_vision_tower", "mm_projector_type", "image_aspect_ratio", "mm_patch_merge_type",
                "image_grid_pinpoints", "mm_hidden_size", "mm_newline_position"):
        assert key in config
    with safe_open(again / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.image_newline" in keys
    assert "model.mm_projector.0.weight" in keys and "model.mm_projector.2.bias" in keys
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.encoder.layers.") for k in keys)
    assert not any(".head." in k for k in keys)
    assert "RANDOM" in (again / "README.md").read_text()


def test_different_seed_gives_different_weights(tiny_checkpoint, tmp_path):
    other = make_demo("tiny", tmp_path / "other", seed=1)
    assert (Path(tiny_checkpoint) / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_realistic_tokenizer_decodes_every_id():
    spec = DEMO_SPECS["realistic"]
    tokenizer = build_tokenizer(spec.bpe_vocab, seed=0)
    size = tokenizer.get_vocab_size()
    assert size == spec.bpe_vocab + len(SPECIAL_TOKENS)
    decoded = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    assert all(decoded), "every id must decode to some text"
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(spec.bpe_vocab, size))


def test_realistic_has_onevision_05b_dimensions():
    spec = DEMO_SPECS["realistic"]
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.intermediate_size) == (
        896, 24, 14, 2, 4864)
    assert spec.tie_embeddings and spec.vision is None  # ORIG's hard-coded SigLIP so400m
    cfg = LlavaConfig.from_dict({
        "architectures": ["LlavaQwenForCausalLM"], "hidden_size": 896,
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "image_aspect_ratio": spec.aspect_ratio,
        "image_grid_pinpoints": spec.pinpoints, "mm_patch_merge_type": "spatial_unpad",
    })
    assert cfg.vision.num_hidden_layers - 1 == 26
    assert cfg.vision.num_patches_per_side ** 2 == 729
    assert len(cfg.image_grid_pinpoints) == 36


def test_make_demo_cli(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "server.cli", "make-demo", "--size", "tiny", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert "RANDOM" in done.stdout
    assert (out / "config.json").exists()


def test_small_demo_has_an_audio_tower_tiny_only_on_request(tiny_checkpoint, tiny_audio_checkpoint):
    from model_runtime.checkpoint_tools.demo import demo_config

    tokenizer = build_tokenizer(DEMO_SPECS["tiny"].bpe_vocab, seed=0)
    small = LlavaConfig.from_dict(demo_config(DEMO_SPECS["small"], tokenizer.get_vocab_size(), tokenizer))
    assert small.audio is not None and small.audio.num_mel_bins == 128 and small.audio.speech_encoder_ds_rate == 5
    assert LlavaConfig.from_pretrained(tiny_checkpoint).audio is None
    assert LlavaConfig.from_pretrained(tiny_audio_checkpoint).audio is not None
    with safe_open(Path(tiny_audio_checkpoint) / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {"model.speech_projector.linear1.weight", "model.speech_projector.linear2.bias",
            "model.speech_encoder.embed_positions.weight", "model.speech_encoder.layers.1.fc2.weight"} <= keys
