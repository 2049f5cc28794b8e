"""Helpers for the checkpoint tests: the logit gap to transformers' own class on the same ids and
pixels, a language-model-only base, the `small` demo checkpoint (the rest is in testkit.checkpoints)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_runtime import ChatTurn, load_pretrained_model
from model_runtime.checkpoint.folder import is_language_model_key
from model_runtime.checkpoint_tools import make_demo
from model_runtime.constants import IMAGE_TOKEN_INDEX
from testkit.checkpoints import read_all, write_checkpoint
from testkit.media import random_image


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


def language_model_only(src: Path, out: Path, **kw) -> Path:
    """The LM tensors of `src` (what a plain base such as vicuna or Qwen2 ships)."""
    tensors = {n: t for n, t in read_all(src).items() if is_language_model_key(n)}
    return write_checkpoint(src, out, tensors, **kw)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    return make_demo("small", tmp_path_factory.mktemp("ckpt") / "small", seed=0)
