"""A prompt's positions as segments: runs of text ids and media items, paired by one rule.

Token ids hold one negative sentinel per media item (`<image>` -200 for images and videos,
`<audio>` -300). The k-th sentinel of a value takes the k-th item carrying that sentinel, in the
request's item order (ORIG: one queue per modality), so items of different sentinels may come in
any order between them. Both users of a prompt's layout split it here: the model when it splices
feature rows (arch/meta.py) and the engine when it hashes KV blocks and plans encodings
(engine/blocks.py), so they cannot pair a sentinel with different items.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass


class MediaMismatchError(ValueError):
    """The prompt's placeholders and the request's media items do not match (count per modality)."""


@dataclass(frozen=True)
class TextRun:
    """Positions filled by token ids[start:stop]."""

    start: int
    stop: int

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ItemRun:
    """Positions filled by the feature rows of item `item` (an index into the request's items)."""

    item: int
    num_tokens: int


PromptSegment = TextRun | ItemRun


def split_prompt(token_ids: Sequence[int], sentinels: Sequence[int], num_tokens: Sequence[int]) -> list[PromptSegment]:
    """Text runs and item runs in position order; item i has sentinel `sentinels[i]` and fills
    `num_tokens[i]` positions. A text run may be empty (two sentinels in a row, or one at an end)."""
    if len(sentinels) != len(num_tokens):
        raise ValueError(f"{len(sentinels)} sentinels for {len(num_tokens)} items")
    queues: dict[int, deque[int]] = {}
    for i, sentinel in enumerate(sentinels):
        queues.setdefault(sentinel, deque()).append(i)
    wanted = Counter(t for t in token_ids if t < 0)
    have = {s: len(q) for s, q in queues.items()}
    if wanted != have:
        raise MediaMismatchError(f"placeholders by sentinel {dict(wanted)} but items {have}")
    segments: list[PromptSegment] = []
    run_start = 0
    for i, t in enumerate(token_ids):
        if t < 0:
            item = queues[t].popleft()
            segments += [TextRun(run_start, i), ItemRun(item, num_tokens[item])]
            run_start = i + 1
    segments.append(TextRun(run_start, len(token_ids)))
    return segments
