"""Projector-only checkpoints: projector + a plain LM base (+ the tower's own checkpoint) == full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_runtime import ConfigError, load_pretrained_model
from model_runtime.checkpoint.folder import is_language_model_key
from model_runtime.checkpoint.tower_source import TOWER_PREFIX
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.safetensors_write import save_tensors
from testkit.checkpoints import logits_of, read_all
from tests.model_runtime.checkpoint.conftest import language_model_only


def split_checkpoint(full: Path, root: Path) -> tuple[Path, Path, Path]:
    """ORIG's pieces of a LLaVA-1.5-style release: a plain LM base, a projector folder
    (config.json + mm_projector.safetensors), and the vision tower in its own release layout."""
    tensors = read_all(full)
    base = language_model_only(full, root / "base")
    tower = root / "tower"
    tower.mkdir()
    tower_tensors = {n.removeprefix(TOWER_PREFIX): t for n, t in tensors.items() if n.startswith(TOWER_PREFIX)}
    tower_tensors["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 8)  # never read
    save_tensors(tower_tensors, tower / "model.safetensors")
    projector = root / "projector"
    projector.mkdir()
    save_tensors({n: t for n, t in tensors.items()
                  if not is_language_model_key(n) and not n.startswith(TOWER_PREFIX)},
                 projector / "mm_projector.safetensors")
    config = json.loads((full / "config.json").read_text())
    (projector / "config.json").write_text(json.dumps({**config, "mm_vision_tower": str(tower)}))
    return base, projector, tower


def test_projector_on_base_loads_the_same_model_as_full(tiny_checkpoint, tmp_path):
    full = load_pretrained_model(tiny_checkpoint, dtype="float32")
    base, projector, _ = split_checkpoint(Path(tiny_checkpoint), tmp_path)
    assembled = load_pretrained_model(projector, model_base=base, dtype="float32")
    assert assembled.kind == "projector"
    expected = full.model.state_dict()
    got = assembled.model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert torch.equal(logits_of(assembled), logits_of(full))


def test_projector_refusals(tiny_checkpoint, tmp_path):
    base, projector, tower = split_checkpoint(Path(tiny_checkpoint), tmp_path)
    with pytest.raises(ConfigError, match="pass model_base"):
        load_pretrained_model(projector)
    wide = make_demo("tiny", tmp_path / "wide", overrides={"hidden_size": 96})
    with pytest.raises(ConfigError, match="hidden_size: checkpoint 64 vs base 96"):
        load_pretrained_model(projector, model_base=language_model_only(wide, tmp_path / "wide_base"))
    (tower / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no .safetensors weights"):
        load_pretrained_model(projector, model_base=base)
    (projector / "mm_projector.safetensors").rename(projector / "mm_projector.bin")
    with pytest.raises(ConfigError, match="convert-bin"):
        load_pretrained_model(projector, model_base=base)


def test_weights_missing_everywhere_are_an_error_not_random(tiny_checkpoint, tmp_path):
    base, projector, _ = split_checkpoint(Path(tiny_checkpoint), tmp_path)
    tensors = read_all(projector)
    tensors.pop("model.image_newline")
    save_tensors(tensors, projector / "mm_projector.safetensors")
    with pytest.raises(ConfigError, match="model.image_newline"):
        load_pretrained_model(projector, model_base=base)
