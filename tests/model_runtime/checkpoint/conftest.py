"""Helpers for the checkpoint tools: logits of a loaded model (and their gap to transformers' own
class on the same ids and pixels), checkpoints taken apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model_runtime import ChatTurn, load_pretrained_model
from model_runtime.checkpoint.folder import is_language_model_key, weight_files
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.safetensors_write import save_state_dict
from model_runtime.constants import IMAGE_TOKEN_INDEX
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


def load_both(hf_dir: Path, hf_model_cls):
    """transformers' `hf_model_cls` and our loader on the same llava-hf folder, float32."""
    hf = hf_model_cls.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return hf, load_pretrained_model(str(hf_dir), dtype="float32")


def logit_gap(hf, ours, kind: str = "image", size: tuple[int, int] = (160, 90), num_frames: int = 3) -> float:
    """Max |our logits - transformers' logits| on one prompt: text only, one image of `size` (W, H)
    or one video of `num_frames` frames. Both see the same ids (ours: one sentinel; transformers: its
    placeholder id once per feature row) and the same pixels (our processor's); same token count."""
    p = ours.processor
    media, text = [], "What is shown?"
    if kind == "image":
        media = [p.process_image(random_image(*size, seed=5), single_crop=False)]
        text = "<image>\n" + text
    elif kind == "video":
        frames = [random_image(*size, seed=10 + i) for i in range(num_frames)]
        media = [p.process_video(frames, [float(i) for i in range(num_frames)], float(num_frames))]
        text = "<video>\n" + text
    prompt = p.build_prompt([ChatTurn("user", text)], media)
    hf_ids, kwargs = list(prompt.token_ids), {}
    if media:
        item = media[0]
        at = hf_ids.index(IMAGE_TOKEN_INDEX)
        token = hf.config.video_token_id if kind == "video" else hf.config.image_token_id
        hf_ids[at : at + 1] = [token] * item.num_tokens
        if kind == "video":
            kwargs["pixel_values_videos"] = item.data[None]  # [1, F, 3, S, S]
        elif ours.config.is_anyres:
            w, h = item.image_size
            kwargs.update(pixel_values=item.data[None], image_sizes=torch.tensor([[h, w]]))  # [1, k, 3, S, S]
        else:
            kwargs["pixel_values"] = item.data  # [1, 3, S, S]
    with torch.inference_mode():
        items = ours.model.encode_media(media)
        embeds, mask, positions = ours.model.prepare_inputs_for_multimodal([prompt.token_ids], [items])
        mine = ours.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        theirs = hf(input_ids=torch.tensor([hf_ids]), **kwargs).logits
    assert mine.shape[1] == theirs.shape[1] == len(hf_ids)  # the same token count
    width = min(mine.shape[-1], theirs.shape[-1])
    return (mine[..., :width] - theirs[..., :width]).abs().max().item()


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
