"""Helpers for the checkpoint tools: logits of a loaded model, checkpoints taken apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model_runtime import ChatTurn, make_demo
from model_runtime.checkpoint.folder import is_language_model_key, weight_files
from model_runtime.checkpoint.safetensors_io import SafetensorsFile, save_state_dict
from tests.conftest import random_image

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def logits_of(loaded, with_image: bool = True) -> torch.Tensor:
    """Float32 logits [L, V] of one fixed prompt (one image when `with_image`, so the tower and
    projector take part)."""
    p = loaded.processor
    media = [p.process_image(random_image(100, 60, seed=5), single_crop=False)] if with_image else []
    text = ("<image>\n" if with_image else "") + "Describe the picture in a few words, please."
    prompt = p.build_prompt([ChatTurn("user", text)], media)
    model = loaded.model
    with torch.no_grad():
        items = model.encode_media(media)
        embeds, mask, positions = model.prepare_inputs_for_multimodal([prompt.token_ids], [items])
        return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[0].float()


def read_all(path: Path) -> dict[str, torch.Tensor]:
    return {name: t for file in weight_files(Path(path)) for name, t in SafetensorsFile(file)}


def write_checkpoint(src: Path, out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = 1 << 40,
                     config: dict | None = None) -> Path:
    """`tensors` as a checkpoint at `out`, with `src`'s config (or `config`) and tokenizer files."""
    out.mkdir(parents=True)
    save_state_dict(tensors, out, max_shard_bytes)
    for name in SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def language_model_only(src: Path, out: Path, **kw) -> Path:
    """The LM tensors of `src` (what a plain base such as vicuna or Qwen2 ships)."""
    tensors = {n: t for n, t in read_all(src).items() if is_language_model_key(n)}
    return write_checkpoint(src, out, tensors, **kw)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    return make_demo("small", tmp_path_factory.mktemp("ckpt") / "small", seed=0)
