"""KV block accounting: which cache blocks are free, who holds them, and the prefix-cache index.

The KV cache is split into fixed-size blocks of `block_size` token positions (kv.py owns the
tensors). `BlockPool` hands out block ids, counts references (several sequences share the blocks
of a common prefix) and keeps full blocks findable by content after their last holder lets go:
a block's `BlockHash` is a digest of its parent block's hash and of what fills its positions
(token ids, and for media rows the item's content key and row numbers), so equal hashes mean
equal KV. Blocks without a hash are handed out before cached blocks, and cached blocks least
recently released first (that is the eviction order of the prefix cache). Among blocks without a
hash the pool keeps a sequence's blocks adjacent where it can: a holder's next block is the one
after its last if that is free, a prompt that will want many blocks starts where that many free
ids follow one another, other prompt chunks take the lowest free ids and single blocks (decode
rows) the highest, so a long prompt computed chunk by chunk while other rows decode still lies in
one run of ids, which attention reads in place instead of gathering (kv.py). Block 0 is never
handed out: it stays zero and pads block tables. Knows no tensors.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from model_runtime.arch.segments import ItemRun, split_prompt

BlockHash = bytes
NULL_BLOCK = 0  # all zeros, never allocated: pads the block tables of a padded attention read

_DIGEST_SIZE = 16
MIN_RUN_SEARCH = 8  # a holder expecting this many blocks starts a new run where they all fit


class NoFreeBlocksError(RuntimeError):
    """Fewer free blocks than asked for (the caller checks `num_free` first)."""


@dataclass(frozen=True)
class TextSegment:
    """Prompt positions filled by token ids."""

    token_ids: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class MediaSegment:
    """Prompt positions filled by the feature rows of one media item (its content key names them)."""

    key: str
    num_tokens: int
    item: int = 0  # its index among the request's media items


class MediaSpan(NamedTuple):
    """Positions [start, stop) of a prompt hold the rows of media item `item` (content key `key`)."""

    start: int
    stop: int
    key: str
    item: int


Segment = TextSegment | MediaSegment


class PromptLayout:
    """What fills each position of a spliced prompt: text runs and media rows, in order."""

    def __init__(self, segments: Sequence[Segment], seed: BlockHash | None = None) -> None:
        self.seed = seed  # the first block's parent hash: what else decides the KV (a LoRA adapter's key)
        self.segments = tuple(s for s in segments if s.num_tokens)
        starts, total = [], 0
        for s in self.segments:
            starts.append(total)
            total += s.num_tokens
        self.starts = tuple(starts)
        self.num_tokens = total
        self.media_spans = tuple(MediaSpan(start, start + s.num_tokens, s.key, s.item)
                                 for start, s in zip(starts, self.segments, strict=True)
                                 if isinstance(s, MediaSegment))  # in position order

    @classmethod
    def from_ids(cls, token_ids: Sequence[int], keys: Sequence[str], sentinels: Sequence[int],
                 num_tokens: Sequence[int], seed: BlockHash | None = None) -> PromptLayout:
        """Token ids with one negative sentinel per media item; item i has content key `keys[i]`,
        sentinel `sentinels[i]` and `num_tokens[i]` rows. Sentinels take items by the model's own
        rule (arch/segments.py), so the layout hashed here is the one the model splices."""
        if len(keys) != len(sentinels):
            raise ValueError(f"{len(keys)} keys for {len(sentinels)} items")
        return cls([
            MediaSegment(keys[seg.item], seg.num_tokens, seg.item) if isinstance(seg, ItemRun)
            else TextSegment(tuple(token_ids[seg.start : seg.stop]))
            for seg in split_prompt(token_ids, sentinels, num_tokens)
        ], seed)

    def describe(self, start: int, end: int) -> bytes:
        """Bytes naming what fills positions [start, end) (<= num_tokens): 4 bytes per token id, and
        for media rows a marker that no token id has, the item's key and the row range. The same
        positions content always gives the same bytes, whichever segments it came from."""
        parts: list[bytes] = []
        for seg_start, seg in zip(self.starts, self.segments, strict=True):
            seg_end = seg_start + seg.num_tokens
            if seg_end <= start or seg_start >= end:
                continue
            lo, hi = max(start, seg_start) - seg_start, min(end, seg_end) - seg_start
            if isinstance(seg, TextSegment):
                parts.append(ids_bytes(seg.token_ids[lo:hi]))
            else:
                key = seg.key.encode()
                parts.append(_MEDIA_MARKER + len(key).to_bytes(4, "little") + key
                             + lo.to_bytes(4, "little") + hi.to_bytes(4, "little"))
        return b"".join(parts)


_MEDIA_MARKER = b"\xff\xff\xff\xff"  # -1 as a token id: never a real one


def ids_bytes(ids: Iterable[int]) -> bytes:
    return b"".join(int(t).to_bytes(4, "little", signed=True) for t in ids)


def hash_block(parent: BlockHash | None, content: bytes) -> BlockHash:
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    digest.update(parent or b"root")
    digest.update(content)
    return digest.digest()


def extend_hashes(hashes: list[BlockHash], layout: PromptLayout, output_ids: Sequence[int], num_tokens: int,
                  block_size: int) -> None:
    """Append the hashes of the full blocks among the first `num_tokens` positions that `hashes`
    lacks (positions past the prompt are the generated `output_ids`)."""
    prompt_len = layout.num_tokens
    for i in range(len(hashes), num_tokens // block_size):
        start, end = i * block_size, (i + 1) * block_size
        content = layout.describe(start, min(end, prompt_len)) if start < prompt_len else b""
        if end > prompt_len:
            content += ids_bytes(output_ids[max(start, prompt_len) - prompt_len : end - prompt_len])
        hashes.append(hash_block(hashes[-1] if hashes else layout.seed, content))


class _IdSet:
    """Block ids without a hash that are free: a mask over every id (runs of free ids are found in
    it), and heaps for the lowest or highest free id in log time."""

    def __init__(self, ids: Iterable[int], size: int) -> None:
        self._free = np.zeros(size, dtype=bool)
        self._free[list(ids)] = True
        self._count = int(self._free.sum())
        self._rebuild()

    def _rebuild(self) -> None:
        self._low = np.flatnonzero(self._free).tolist()  # heaps with stale entries, dropped when they reach the top
        self._high = [-i for i in reversed(self._low)]

    def __len__(self) -> int:
        return self._count

    def __contains__(self, block: int) -> bool:
        return 0 <= block < len(self._free) and bool(self._free[block])

    def add(self, block: int) -> None:
        self._free[block] = True
        self._count += 1
        if max(len(self._low), len(self._high)) > 2 * self._count + 64:  # mostly stale: rebuild, so the heaps stay bounded
            self._rebuild()
            return
        heapq.heappush(self._low, block)
        heapq.heappush(self._high, -block)

    def remove(self, block: int) -> None:
        self._free[block] = False
        self._count -= 1

    def first_run(self, length: int) -> int | None:
        """The lowest id starting `length` consecutive free ids, if there is such a run."""
        counts = np.concatenate(([0], np.cumsum(self._free, dtype=np.int64)))
        starts = np.flatnonzero(counts[length:] - counts[:-length] == length)
        return int(starts[0]) if starts.size else None

    def pop(self, lowest: bool) -> int:
        heap, sign = (self._low, 1) if lowest else (self._high, -1)
        while True:
            block = sign * heapq.heappop(heap)
            if self._free[block]:
                self.remove(block)
                return block


class BlockPool:
    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: need at least 2 (block 0 is reserved)")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, BlockHash] = {}
        self._block_of: dict[BlockHash, int] = {}
        self._unhashed = _IdSet(range(1, num_blocks), num_blocks)  # free, no hash: handed out first
        self._cached: OrderedDict[int, None] = OrderedDict()  # free with a hash, by release time (LRU first)
        self._touched = [False] * num_blocks  # ever handed out (kv.py zeroes a block on first use)
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0
        self.num_evictions = 0

    # -- counts -----------------------------------------------------------------------------
    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free, including cached blocks that would be evicted)."""
        return len(self._unhashed) + len(self._cached)

    @property
    def num_used(self) -> int:
        return self.num_usable - self.num_free

    @property
    def num_cached(self) -> int:
        """Free blocks still findable by hash (the prefix cache's idle content)."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        return self.num_used / self.num_usable

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    # -- allocation -------------------------------------------------------------------------
    def allocate(self, count: int, after: int | None = None, chunk: bool = True,
                 expect: int = 0) -> tuple[list[int], list[int]]:
        """`count` blocks for one holder; returns (blocks, those never handed out before).
        `after`: the holder's last block (its next ones are preferred); `chunk`: several positions
        at once (a prompt chunk: lowest free ids first) rather than one decode row (highest first);
        `expect`: blocks the holder will want in all, these included (a prompt computed in chunks):
        a new run starts where that many free ids follow one another, if anywhere."""
        if count > self.num_free:
            raise NoFreeBlocksError(f"{count} blocks asked, {self.num_free} free")
        blocks: list[int] = []
        nxt = -1 if after is None else after + 1
        if nxt not in self._unhashed and chunk and expect >= MIN_RUN_SEARCH:
            nxt = self._unhashed.first_run(expect) or self._unhashed.first_run(count) or -1
        while len(blocks) < count and nxt in self._unhashed:
            self._unhashed.remove(nxt)
            blocks.append(nxt)
            nxt += 1
        while len(blocks) < count and self._unhashed:
            blocks.append(self._unhashed.pop(lowest=chunk))
        while len(blocks) < count:
            block, _ = self._cached.popitem(last=False)
            self._evict(block)
            blocks.append(block)
        fresh = []
        for block in blocks:
            self._refs[block] = 1
            if not self._touched[block]:
                self._touched[block] = True
                fresh.append(block)
        return blocks, fresh

    def share(self, blocks: Sequence[int]) -> None:
        """One more holder for blocks already held (choices sharing their prompt's blocks)."""
        for block in blocks:
            if self._refs[block] < 1:
                raise RuntimeError(f"block {block} is not held")
            self._refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block, last block first (so a sequence's tail is evicted before
        its head, which other prompts are more likely to share)."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] < 0:
                raise RuntimeError(f"block {block} released more often than held")
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._cached[block] = None
                else:
                    self._unhashed.add(block)

    # -- prefix cache -----------------------------------------------------------------------
    def lookup(self, hashes: Sequence[BlockHash], max_blocks: int) -> list[int]:
        """Take a reference to the longest run of cached blocks matching `hashes` (at most
        `max_blocks`), counted as a query of `max_blocks` blocks' tokens by the caller."""
        found: list[int] = []
        if not self.enable_prefix_caching:
            return found
        for h in hashes[:max_blocks]:
            block = self._block_of.get(h)
            if block is None:
                break
            found.append(block)
        for block in found:
            if self._refs[block] == 0:
                del self._cached[block]
            self._refs[block] += 1
        return found

    def count_query(self, num_tokens: int, num_hits: int) -> None:
        self.num_queried_tokens += num_tokens
        self.num_hit_tokens += num_hits

    def register(self, block: int, block_hash: BlockHash) -> None:
        """Make a full, computed block findable (a block with the same content already registered wins)."""
        if not self.enable_prefix_caching or block in self._hash_of or block_hash in self._block_of:
            return
        self._hash_of[block] = block_hash
        self._block_of[block_hash] = block

    def _evict(self, block: int) -> None:
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._block_of[h]
            self.num_evictions += 1

    def reset_prefix_cache(self) -> int:
        """Forget every cached block nobody holds; returns how many were forgotten."""
        idle = list(self._cached)
        self._cached.clear()
        for block in idle:
            self._evict(block)
            self._unhashed.add(block)
        return len(idle)
