"""Paged attention over the block pool equals dense causal attention over each sequence alone."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from model_runtime.arch.attention import paged_attention
from model_runtime.engine.blocks import BlockPool
from model_runtime.engine.kv import (
    IN_PLACE_MIN_POSITIONS,
    KVCache,
    StepRow,
    bytes_per_block,
    kv_cache_bytes,
    paged_inputs,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 4, 2, 8, 4


def tiny_lm(num_layers: int = 1):
    """Just what KVCache reads of a model (served_model.py): its text config, dtype and decoder layers' devices."""
    config = SimpleNamespace(num_hidden_layers=num_layers, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                             hidden_size=HEADS * HEAD_DIM, head_dim=HEAD_DIM)
    layers = [torch.nn.LayerNorm(1) for _ in range(num_layers)]  # a layer's parameters: where its KV goes
    return SimpleNamespace(text_config=config, compute_dtype=torch.float32, decoder_layers=layers)


def dense(q, k, v, positions):
    """q [H, n, Dh] at `positions`, k/v [KV, L, Dh] of the whole sequence -> [n, H, Dh], causal."""
    k = k.repeat_interleave(HEADS // KV_HEADS, 0)
    v = v.repeat_interleave(HEADS // KV_HEADS, 0)
    mask = torch.arange(k.shape[1])[None, :] <= torch.tensor(positions)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1)


def run_step(cache, rows_spec, seqs, tables):
    """rows_spec: (name, start, n); writes and attends those positions; returns output per name."""
    rows, q, k, v, offset = [], [], [], [], 0
    for name, start, n in rows_spec:
        rows.append(StepRow(offset, n, start, tables[name]))
        q.append(seqs[name]["q"][:, start : start + n])
        k.append(seqs[name]["k"][:, start : start + n])
        v.append(seqs[name]["v"][:, start : start + n])
        offset += n
    inputs = paged_inputs(cache, rows, torch.device("cpu"))
    module = SimpleNamespace(layer_idx=0)
    out = paged_attention(module, torch.cat(q, 1)[None], torch.cat(k, 1)[None], torch.cat(v, 1)[None], inputs,
                          1 / math.sqrt(HEAD_DIM))[0]
    result, offset = {}, 0
    for name, _, n in rows_spec:
        result[name] = out[offset : offset + n]
        offset += n
    return result


def test_decode_rows_and_prompt_chunks_equal_dense_attention_per_sequence():
    torch.manual_seed(0)
    lengths = {"a": 37, "b": 5, "c": 46, "d": 31, "e": 33, "f": 36}
    seqs = {name: {"q": torch.randn(HEADS, n, HEAD_DIM), "k": torch.randn(KV_HEADS, n, HEAD_DIM),
                   "v": torch.randn(KV_HEADS, n, HEAD_DIM)} for name, n in lengths.items()}
    cache = KVCache(tiny_lm(), num_blocks=64, block_size=BLOCK)
    cache.key_cache[0][:, 1:] = float("nan")  # unwritten memory: never read, or zeroed when first handed out
    cache.value_cache[0][:, 1:] = float("nan")
    pool = BlockPool(64)
    tables = {}
    for name in ["a", "c", "b", "e", "d", "f"]:  # interleaved, so tables are not contiguous
        tables[name], fresh = pool.allocate(-(-lengths[name] // BLOCK))
        cache.zero(fresh)
    # history: a, b, e, f up to their last position, c up to 20 (two chunks: from 0, then from 12)
    run_step(cache, [("a", 0, 36), ("b", 0, 4), ("c", 0, 12), ("e", 0, 32), ("f", 0, 35)], seqs, tables)
    run_step(cache, [("c", 12, 8)], seqs, tables)
    # the step: four decode rows of different lengths (one padded group or several), a chunk from 20,
    # a first chunk from 0
    step = [("a", 36, 1), ("b", 4, 1), ("e", 32, 1), ("f", 35, 1), ("c", 20, 26), ("d", 0, 31)]
    got = run_step(cache, step, seqs, tables)
    for name, start, n in step:
        s = seqs[name]
        expected = dense(s["q"][:, start : start + n], s["k"], s["v"], list(range(start, start + n)))
        torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-5, msg=name)


def test_kv_cache_size_from_bytes_or_share_and_block_copies():
    lm = tiny_lm(num_layers=2)
    per_block = bytes_per_block(lm.text_config, BLOCK, torch.float32)
    assert per_block == 2 * 2 * KV_HEADS * BLOCK * HEAD_DIM * 4
    assert kv_cache_bytes(10 * per_block, torch.device("cpu")) == 10 * per_block
    assert 0 < kv_cache_bytes(0.01, torch.device("cpu")) < kv_cache_bytes(0.02, torch.device("cpu")) * 1.01
    cache = KVCache(lm, num_blocks=6, block_size=BLOCK)
    assert cache.num_bytes == 6 * per_block
    assert torch.count_nonzero(cache.key_cache[1][:, 0]) == 0  # the zero block
    cache.key_cache[1][:, 2] = 7.0
    cache.copy(2, [3, 5])
    assert torch.equal(cache.key_cache[1][:, 3], cache.key_cache[1][:, 2])
    assert torch.equal(cache.key_cache[1][:, 5], cache.key_cache[1][:, 2])
    cache.zero([5])
    assert torch.count_nonzero(cache.key_cache[1][:, 5]) == 0


def test_a_prompt_chunk_over_consecutive_blocks_is_read_in_place_and_equals_the_gathered_read():
    torch.manual_seed(1)
    lengths = {"long": 44, "other": 9}
    seqs = {name: {"q": torch.randn(HEADS, n, HEAD_DIM), "k": torch.randn(KV_HEADS, n, HEAD_DIM),
                   "v": torch.randn(KV_HEADS, n, HEAD_DIM)} for name, n in lengths.items()}
    cache = KVCache(tiny_lm(), num_blocks=32, block_size=BLOCK)
    pool = BlockPool(32)
    tables = {"long": [], "other": []}

    def grow(name, positions, chunk):
        need = -(-positions // BLOCK) - len(tables[name])
        blocks, fresh = pool.allocate(need, after=tables[name][-1] if tables[name] else None, chunk=chunk)
        tables[name] += blocks
        cache.zero(fresh)

    # the long sequence's prompt in chunks while the other row decodes and takes blocks between them
    grow("other", 8, chunk=True)
    run_step(cache, [("other", 0, 8)], seqs, tables)
    for start, n in [(0, 12), (12, 20), (32, 12)]:
        grow("long", start + n, chunk=True)
        grow("other", 9, chunk=False)
        if start < 32:
            run_step(cache, [("long", start, n)], seqs, tables)
    assert tables["long"] == list(range(tables["long"][0], tables["long"][0] + 11))  # one run of ids
    assert paged_inputs(cache, [StepRow(0, 12, 32, tables["long"])], torch.device("cpu")).prompt_chunks[0].first_block \
        == tables["long"][0]
    got = run_step(cache, [("long", 32, 12)], seqs, tables)["long"]
    s = seqs["long"]
    torch.testing.assert_close(got, dense(s["q"][:, 32:], s["k"], s["v"], list(range(32, 44))), atol=1e-5, rtol=1e-5)
    # the same keys gathered from a scattered copy of the blocks give the same numbers
    scattered = list(reversed(range(20, 31)))
    for t in (*cache.key_cache, *cache.value_cache):
        t[:, scattered] = t[:, tables["long"]]
    assert paged_inputs(cache, [StepRow(0, 12, 32, scattered)], torch.device("cpu")).prompt_chunks[0].first_block is None
    again = run_step(cache, [("long", 32, 12)], seqs, {"long": scattered})["long"]
    torch.testing.assert_close(got, again, atol=1e-6, rtol=1e-6)


def test_long_decode_rows_in_few_runs_are_read_alone_and_in_place_beside_grouped_rows():
    torch.manual_seed(2)
    lengths = {"long": IN_PLACE_MIN_POSITIONS + 5, "long2": IN_PLACE_MIN_POSITIONS + 9,
               "shared": IN_PLACE_MIN_POSITIONS + 2, "a": 30, "b": 33}
    seqs = {name: {"q": torch.randn(HEADS, n, HEAD_DIM), "k": torch.randn(KV_HEADS, n, HEAD_DIM),
                   "v": torch.randn(KV_HEADS, n, HEAD_DIM)} for name, n in lengths.items()}
    num_blocks = 4 * IN_PLACE_MIN_POSITIONS // BLOCK + 64
    cache = KVCache(tiny_lm(), num_blocks=num_blocks, block_size=BLOCK)
    pool = BlockPool(num_blocks)
    tables = {}
    for name in ["a", "long", "b"]:
        tables[name], fresh = pool.allocate(-(-lengths[name] // BLOCK))
        cache.zero(fresh)
    # shared: its first two blocks elsewhere (a prefix another sequence computed), then one run: 2 runs
    head, _ = pool.allocate(2)
    pool.allocate(1)
    body, _ = pool.allocate(-(-lengths["shared"] // BLOCK) - 2)
    tables["shared"] = head + body
    cache.zero(tables["shared"])
    scattered = []  # long2: as long, but its blocks interleaved with another holder's
    for _ in range(-(-lengths["long2"] // BLOCK)):
        scattered += pool.allocate(1)[0]
        pool.allocate(1)
    tables["long2"] = scattered
    cache.zero(scattered)
    run_step(cache, [(name, 0, n - 1) for name, n in lengths.items()], seqs, tables)
    step = [(name, n - 1, 1) for name, n in lengths.items()]
    rows = [StepRow(i, 1, start, tables[name]) for i, (name, start, _) in enumerate(step)]
    groups = paged_inputs(cache, rows, torch.device("cpu")).decode_groups
    alone = {g.runs for g in groups if g.runs is not None}
    assert alone == {((tables["long"][0], len(tables["long"])),),
                     ((head[0], 2), (body[0], len(body)))} and len(groups) >= 3  # long2 is gathered
    got = run_step(cache, step, seqs, tables)
    for name, start, n in step:
        s = seqs[name]
        expected = dense(s["q"][:, start : start + n], s["k"], s["v"], list(range(start, start + n)))
        torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-5, msg=name)
