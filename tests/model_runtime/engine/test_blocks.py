"""KV block accounting and the prefix-cache index: references, hand-out order, LRU eviction, hashes."""

from __future__ import annotations

import pytest

from model_runtime import MediaMismatchError
from model_runtime.engine.blocks import (
    NULL_BLOCK,
    BlockPool,
    MediaSegment,
    NoFreeBlocksError,
    PromptLayout,
    TextSegment,
    extend_hashes,
)


def hashes(layout: PromptLayout, num_tokens: int, block_size: int = 4, outputs=()) -> list[bytes]:
    out: list[bytes] = []
    extend_hashes(out, layout, list(outputs), num_tokens, block_size)
    return out


def test_blocks_are_counted_and_the_zero_block_is_never_handed_out():
    pool = BlockPool(5)
    blocks, fresh = pool.allocate(4)
    assert NULL_BLOCK not in blocks and sorted(blocks) == [1, 2, 3, 4] and fresh == blocks
    assert (pool.num_used, pool.num_free, pool.usage) == (4, 0, 1.0)
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(1)
    pool.share(blocks[:2])  # a second holder
    pool.release(blocks)
    assert pool.num_free == 2 and [pool.ref_count(b) for b in blocks] == [1, 1, 0, 0]
    pool.release(blocks[:2])
    assert pool.num_free == 4
    again, fresh = pool.allocate(4)
    assert fresh == [] and sorted(again) == [1, 2, 3, 4]  # already touched: nothing to zero
    pool.release(again)
    with pytest.raises(RuntimeError):
        pool.release([again[0]])


def test_unhashed_blocks_go_first_and_cached_ones_are_evicted_least_recently_released_first():
    pool = BlockPool(7)
    a, _ = pool.allocate(2)
    b, _ = pool.allocate(2)
    c, _ = pool.allocate(2)
    for block, h in zip(a + b, [b"a0", b"a1", b"b0", b"b1"], strict=True):
        pool.register(block, h)
    pool.release(a)  # cached, released first
    pool.release(b)  # cached, released later
    pool.release(c)  # never hashed: handed out before any cached block
    assert pool.num_cached == 4
    first, _ = pool.allocate(2)
    assert sorted(first) == sorted(c) and pool.num_cached == 4
    evicted, _ = pool.allocate(1)
    # a sequence's blocks are released tail first, so its head is evicted last
    assert evicted == [a[1]] and pool.num_evictions == 1
    assert pool.lookup([b"a0", b"a1"], 2) == [a[0]]  # the chain stops at the evicted block
    assert pool.lookup([b"b0", b"b1"], 1) == [b[0]]  # at most max_blocks
    assert pool.ref_count(b[0]) == 1 and pool.num_free == 1
    pool.release([b[0]])
    assert pool.reset_prefix_cache() == 2 and pool.num_cached == 0  # b0 and b1; a0 is held
    assert pool.lookup([b"b0"], 1) == []


def test_a_sequence_grown_chunk_by_chunk_keeps_consecutive_blocks_while_decode_rows_take_theirs():
    pool = BlockPool(64)
    prompt, _ = pool.allocate(4, chunk=True)
    rows = [pool.allocate(1, chunk=False)[0] for _ in range(3)]  # decode rows cross block boundaries
    more, _ = pool.allocate(5, after=prompt[-1], chunk=True)
    rows += [pool.allocate(1, after=r[-1], chunk=False)[0] for r in rows]
    last, _ = pool.allocate(3, after=more[-1], chunk=True)
    table = prompt + more + last
    assert table == list(range(table[0], table[0] + 12))
    assert not set(table) & {b for r in rows for b in r}
    pool.release(table)
    again, _ = pool.allocate(12, chunk=True)  # released blocks come back as a run too
    assert again == list(range(again[0], again[0] + 12))


def test_a_long_prompt_starts_its_run_where_all_its_blocks_fit_not_in_a_hole():
    pool = BlockPool(64)
    hole, _ = pool.allocate(3)
    held, _ = pool.allocate(2)
    pool.release(hole)  # ids 1-3 free again, 4-5 held
    first, _ = pool.allocate(1, chunk=True, expect=20)  # a one-token first chunk of a 20-block prompt
    rest, _ = pool.allocate(19, after=first[-1], chunk=True, expect=19)
    table = first + rest
    assert table == list(range(6, 26)) and not set(table) & set(held)
    short, _ = pool.allocate(2, chunk=True, expect=2)  # short prompts fill the hole
    assert short == [1, 2]


def test_register_keeps_the_first_block_with_a_content_and_respects_the_switch():
    pool = BlockPool(4)
    (x, y), _ = pool.allocate(2)
    pool.register(x, b"h")
    pool.register(y, b"h")  # same content computed twice: the first stays findable
    assert pool.lookup([b"h"], 1) == [x]
    off = BlockPool(4, enable_prefix_caching=False)
    (z,), _ = off.allocate(1)
    off.register(z, b"h")
    off.release([z])
    assert off.lookup([b"h"], 1) == [] and off.num_cached == 0


def test_hashes_chain_over_content_and_name_media_rows_by_key_and_row():
    text = PromptLayout([TextSegment((1, 2, 3, 4, 5, 6, 7, 8))])
    split = PromptLayout([TextSegment((1, 2, 3)), TextSegment((4, 5, 6, 7, 8))])
    assert hashes(text, 8) == hashes(split, 8)  # the same tokens, however the runs were cut
    other_head = PromptLayout([TextSegment((9, 2, 3, 4, 5, 6, 7, 8))])
    assert hashes(other_head, 8)[1] != hashes(text, 8)[1]  # block 1 differs through its parent
    image = PromptLayout.from_ids([1, 2, -200, 3], ["key-a"], [-200], [5])
    assert image.num_tokens == 8 and image.media_spans == ((2, 7, "key-a", 0),)
    same = PromptLayout.from_ids([1, 2, -200, 3], ["key-a"], [-200], [5])
    other = PromptLayout.from_ids([1, 2, -200, 3], ["key-b"], [-200], [5])
    assert hashes(image, 8) == hashes(same, 8)
    assert hashes(image, 8)[0] != hashes(other, 8)[0]
    # generated tokens hash like the same tokens in a later prompt
    turn = PromptLayout.from_ids([1, 2, -200, 3, 40, 41], ["key-a"], [-200], [5])
    assert hashes(image, 8, outputs=[40, 41]) == hashes(turn, 8)[:2]
    with pytest.raises(ValueError):
        PromptLayout.from_ids([1, 2], ["key-a"], [-200], [5])


def test_media_segments_are_named_by_their_rows():
    layout = PromptLayout([MediaSegment("k", 6), TextSegment((5, 6))])
    assert layout.describe(0, 4) != layout.describe(2, 6)
    assert layout.describe(4, 8).endswith((5).to_bytes(4, "little") + (6).to_bytes(4, "little"))


def test_sentinels_take_items_by_the_models_rule_whatever_their_order():
    """The k-th <image> takes the k-th image item and the k-th <audio> the k-th audio item (arch/segments.py),
    so items given audio first lay out as the model splices them."""
    ids = [1, -200, 2, -300, 3]
    ordered = PromptLayout.from_ids(ids, ["img", "aud"], [-200, -300], [4, 2])
    swapped = PromptLayout.from_ids(ids, ["aud", "img"], [-300, -200], [2, 4])
    assert [(s.start, s.stop, s.key) for s in ordered.media_spans] == [(1, 5, "img"), (6, 8, "aud")]
    assert [(s.start, s.stop, s.key) for s in swapped.media_spans] == [(1, 5, "img"), (6, 8, "aud")]
    assert [s.item for s in ordered.media_spans] == [0, 1] and [s.item for s in swapped.media_spans] == [1, 0]
    assert hashes(ordered, 8) == hashes(swapped, 8)  # the same content in the same positions
    with pytest.raises(MediaMismatchError):
        PromptLayout.from_ids(ids, ["img", "img2"], [-200, -200], [4, 4])  # two images for one <image>
