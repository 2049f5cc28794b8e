"""convert-bin (the one pickle reader) and upgrade (old config + pickles -> a checkpoint that loads)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from model_runtime import ConfigError, load_pretrained_model
from model_runtime.checkpoint_tools import make_demo
from server.cli import main as cli
from testkit.checkpoints import logits_of, read_all

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


class RunsCode:
    """A pickle that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def pickled_copy(src: Path, out: Path, num_shards: int = 2) -> Path:
    """`src` as a legacy release: pytorch_model-*.bin shards + index, and training state."""
    out.mkdir()
    tensors = read_all(src)
    names = sorted(tensors)
    weight_map = {}
    for i in range(num_shards):
        file = f"pytorch_model-{i + 1:05d}-of-{num_shards:05d}.bin"
        part = names[i::num_shards]
        torch.save({n: tensors[n] for n in part}, out / file)
        weight_map.update(dict.fromkeys(part, file))
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save({"step": RunsCode()}, out / "training_args.bin")
    for name in SIDE_FILES:
        shutil.copyfile(src / name, out / name)
    return out


def test_bin_only_folder_is_refused_then_converted(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    legacy = pickled_copy(Path(tiny_checkpoint), tmp_path / "legacy")
    with pytest.raises(ConfigError, match=f"llava-serve convert-bin {legacy}"):
        load_pretrained_model(legacy)
    monkeypatch.chdir(tmp_path)
    assert cli(["convert-bin", str(legacy), str(tmp_path / "converted")]) == 0
    out = capsys.readouterr().out
    assert "model-00001-of-00002.safetensors" in out and "skipped training_args.bin" in out
    assert not (tmp_path / "pwned").exists()  # weights_only never ran the pickled code
    converted = tmp_path / "converted"
    assert not list(converted.glob("*.bin"))
    assert read_all(converted).keys() == read_all(Path(tiny_checkpoint)).keys()
    expected = load_pretrained_model(tiny_checkpoint, dtype="float32")
    assert torch.equal(logits_of(load_pretrained_model(converted)), logits_of(expected))
    assert cli(["convert-bin", str(legacy), str(converted)]) == 2  # would overwrite
    assert "already has" in capsys.readouterr().err


def test_auto_map_config_is_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_llava.LlavaQwenForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="auto_map"):
        load_pretrained_model(folder)
    assert cli(["upgrade", str(folder)]) == 2


def old_style(src: Path, out: Path, model_type: str, architecture: str) -> Path:
    """A checkpoint from before the LLaVA classes: plain LM architecture, pickled weights."""
    legacy = pickled_copy(src, out, num_shards=1)
    config = json.loads((legacy / "config.json").read_text())
    config.update(model_type=model_type, architectures=[architecture])
    (legacy / "config.json").write_text(json.dumps(config))
    os.rename(legacy / "pytorch_model-00001-of-00001.bin", legacy / "pytorch_model.bin")
    (legacy / "pytorch_model.bin.index.json").unlink()
    return legacy


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in sorted(folder.iterdir())}


@pytest.mark.parametrize(("model_type", "old", "new"), [
    ("llama", "LlamaForCausalLM", "LlavaLlamaForCausalLM"),  # ORIG auto_upgrade's case (LLaVA v0)
    ("qwen2", "Qwen2ForCausalLM", "LlavaQwenForCausalLM"),
])
def test_upgrade_makes_an_old_checkpoint_load_and_is_idempotent(tmp_path, capsys, model_type, old, new):
    current = make_demo("tiny", tmp_path / "current", overrides={"architectures": [new], "model_type": "llava"})
    legacy = old_style(current, tmp_path / "old", model_type, old)
    with pytest.raises(ConfigError, match="convert-bin"):
        load_pretrained_model(legacy)
    before = snapshot(legacy)
    assert cli(["upgrade", str(legacy), str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert f"architectures[0]: '{old}' -> '{new}'" in printed
    assert f"model_type: '{model_type}' -> 'llava'" in printed
    assert "pytorch_model.bin -> model.safetensors" in printed
    assert snapshot(legacy) == before  # SRC untouched when DST is given
    upgraded = tmp_path / "new"
    assert json.loads((upgraded / "config.json").read_text()) == json.loads((current / "config.json").read_text())
    assert torch.equal(logits_of(load_pretrained_model(upgraded)), logits_of(load_pretrained_model(current)))

    after_first = snapshot(upgraded)
    assert cli(["upgrade", str(upgraded)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert snapshot(upgraded) == after_first

    assert cli(["upgrade", str(legacy)]) == 0  # in place
    assert "model_type" in capsys.readouterr().out
    in_place = snapshot(legacy)
    assert cli(["upgrade", str(legacy)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert snapshot(legacy) == in_place
