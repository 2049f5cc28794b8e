"""Prompt text with placeholders -> token ids with sentinels (ORIG mm_utils.tokenizer_image_token).

The text between placeholders is tokenised chunk by chunk, as the checkpoints were trained; when
the tokenizer adds a BOS, it is emitted once and dropped from every chunk (spec section 7). Each
placeholder becomes its modality's sentinel id.
"""

from __future__ import annotations

import re

from model_runtime.constants import SENTINEL_BY_PLACEHOLDER

PLACEHOLDERS = re.compile("|".join(re.escape(p) for p in SENTINEL_BY_PLACEHOLDER))  # any media placeholder
_SPLIT = re.compile("(" + PLACEHOLDERS.pattern + ")")


def tokenize_prompt(prompt: str, tokenizer) -> list[int]:
    pieces = _SPLIT.split(prompt)
    texts, placeholders = pieces[0::2], pieces[1::2]
    chunks = [tokenizer(text).input_ids for text in texts]
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    offset = 0
    if bos is not None and chunks[0] and chunks[0][0] == bos:
        ids.append(bos)
        offset = 1
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(SENTINEL_BY_PLACEHOLDER[placeholders[i - 1]])
        ids.extend(chunk[offset:])
    return ids


def contains_placeholder(text: str) -> bool:
    return _SPLIT.search(text) is not None
