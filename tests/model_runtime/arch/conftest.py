"""Tiny models of any configuration, built in memory from the tiny demo checkpoint's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_runtime.arch.language import LANGUAGE_MODELS
from model_runtime.config import LlavaConfig

TINY_CLIP = {"kind": "clip", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
             "num_attention_heads": 2, "image_size": 42, "patch_size": 14}


@pytest.fixture(scope="session")
def build_model(tiny_checkpoint):
    """overrides -> a random-weight Llava*ForCausalLM (float32, eval) of the tiny geometry (P = 3)."""
    base = json.loads((Path(tiny_checkpoint) / "config.json").read_text())

    def build(seed: int = 0, **overrides):
        raw = {k: v for k, v in {**base, **overrides}.items() if v is not None}
        config_cls, model_cls = LANGUAGE_MODELS[LlavaConfig.from_dict(raw).language]
        torch.manual_seed(seed)
        return model_cls(config_cls(**{k: v for k, v in raw.items() if k != "model_type"})).eval()

    return build
