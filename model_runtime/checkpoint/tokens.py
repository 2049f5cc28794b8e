"""Image tokens added to the tokenizer and the embedding resize, as ORIG builder.py does (spec 9.1).

`<im_patch>` when `mm_use_im_patch_token` (default TRUE when absent), `<im_start>`/`<im_end>` when
`mm_use_im_start_end`; then ALWAYS `resize_token_embeddings(len(tokenizer))`, which also SHRINKS a
padded vocabulary (Qwen2: 152064 rows -> 151646/151647), so logits are as wide as ORIG's. Rows for
tokens the checkpoint lacks are the mean of the existing rows.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from model_runtime.config import LlavaConfig

IM_PATCH_TOKEN = "<im_patch>"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"


def add_special_tokens(tokenizer, model: PreTrainedModel, cfg: LlavaConfig) -> None:
    if cfg.mm_use_im_patch_token:
        tokenizer.add_tokens([IM_PATCH_TOKEN], special_tokens=True)
    if cfg.mm_use_im_start_end:
        tokenizer.add_tokens([IM_START_TOKEN, IM_END_TOKEN], special_tokens=True)
    num_rows = model.get_input_embeddings().get_parameter("weight").shape[0]
    if num_rows == len(tokenizer):
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if len(tokenizer) > num_rows:
        # new rows = mean of the old rows (ORIG initialize_vision_tokenizer, spec 9.4): deterministic,
        # where transformers would draw them at random
        with torch.no_grad():
            for weight in _embedding_weights(model):  # the same tensor twice when tied: harmless
                weight[num_rows:] = weight[:num_rows].mean(dim=0, keepdim=True)


def _embedding_weights(model: PreTrainedModel) -> list[torch.Tensor]:
    weights: list[torch.Tensor] = [model.get_input_embeddings().get_parameter("weight")]
    output = model.get_output_embeddings()
    if output is not None:
        weights.append(output.get_parameter("weight"))
    return weights
