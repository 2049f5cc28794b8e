"""Batch KV cache operations on a real DynamicCache: merge with left padding, select, trim, restore."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from model_runtime.engine.kv import BatchCache, concat

NUM_LAYERS, HEADS, DIM = 2, 2, 4


def batch(lengths: list[int], width: int | None = None, seed: int = 0) -> BatchCache:
    """Rows with `lengths` real tokens, left-padded to `width`; padding keys are zero, real keys random."""
    width = width or max(lengths)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    cache = DynamicCache()
    for layer in range(NUM_LAYERS):
        keys = torch.randn(len(lengths), HEADS, width, DIM, generator=gen) * mask[:, None, :, None]
        cache.update(keys, keys + 1, layer)
    return BatchCache(cache, mask)


def real_keys(b: BatchCache, row: int, layer: int = 0) -> torch.Tensor:
    return b.cache.layers[layer].keys[row][:, b.mask[row].bool()]


def test_merge_left_pads_the_shorter_side_and_keeps_every_row():
    running, new = batch([3, 5], seed=1), batch([7], seed=2)
    before = [real_keys(running, 0), real_keys(running, 1), real_keys(new, 0)]
    merged = concat([running, new])
    assert merged.num_rows == 3 and merged.num_columns == 7
    assert merged.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1] * 7]
    for row, keys in enumerate(before):
        assert torch.equal(real_keys(merged, row), keys)
    for layer in merged.cache.layers:
        assert layer.keys.shape == (3, HEADS, 7, DIM) and layer.values.shape == layer.keys.shape
    assert merged.next_positions().flatten().tolist() == [3, 5, 7]  # cumsum(mask) - 1 of the next token


def test_select_drops_rows_and_trims_padding_columns():
    b = batch([2, 6, 3])
    keep = real_keys(b, 2)
    b.select([0, 2])  # the longest row leaves: columns that are padding for all rows go
    assert b.num_columns == 3 and b.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert torch.equal(real_keys(b, 1), keep)
    assert b.num_tokens == 5 and b.num_bytes == 2 * NUM_LAYERS * 2 * HEADS * 3 * DIM * 4


def test_select_repeats_rows_for_choices():
    b = batch([4])
    b.select([0, 0, 0])
    assert b.num_rows == 3
    assert all(torch.equal(real_keys(b, i), real_keys(b, 0)) for i in range(3))


def test_take_copies_and_restore_undoes_a_partial_update():
    b = batch([2, 5])
    part = b.take([0])
    assert part.num_columns == 2 and b.num_columns == 5  # the copy is trimmed, the original unchanged
    b.append_column()
    b.cache.layers[0].keys = torch.cat([b.cache.layers[0].keys, torch.ones(2, HEADS, 1, DIM)], dim=2)
    b.restore(5)
    assert b.num_columns == 5 and all(layer.keys.shape[2] == 5 for layer in b.cache.layers)
