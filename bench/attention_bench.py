"""Decode-step attention on the CPU: transformers' SDPA paths against llava_sdpa's folded query,
and (--paged) the engine's paged attention against transformers' paged SDPA layout.

One decode step of grouped-query attention (default: Qwen2-0.5B's 14 query / 2 KV heads of 64,
8 rows, 1,512 cached keys, bf16), timed for each way of calling SDPA; then, with --model, whole
engine decode steps of a checkpoint.

--paged times one layer of a decode step over a block pool (16-token blocks, tables scattered)
for mixes of context lengths: our gather per group of similar rows + folded SDPA
(arch/attention.py), transformers' paged layout (every sequence's keys gathered into one row,
all queries in one SDPA call with a block-diagonal mask, as its continuous batching does), and
the old contiguous left-padded cache (no gather at all, every row padded to the longest).

--tower times one layer of the SigLIP tower's attention (so400m-384: 16 heads of 72, 729 patches
per crop, --crops crops, float32): transformers' eager, `llava_eager` (arch/eager_attention.py)
at several slice budgets, and SDPA for scale (not used: ORIG's tower is eager); and whether
llava_eager's result is eager's bits.

    .venv/bin/python bench/attention_bench.py [--threads 2] [--model .demo/realistic] [--paged] [--tower]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def attention_only(args) -> None:
    groups = args.heads // args.kv_heads
    dtype = getattr(torch, args.dtype)
    q = torch.randn(args.rows, args.heads, 1, args.head_dim, dtype=dtype)
    k = torch.randn(args.rows, args.kv_heads, args.keys, args.head_dim, dtype=dtype)
    v = torch.randn_like(k)
    cases = {
        "enable_gqa (transformers, no mask)": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "repeat_kv": lambda: F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)),
        "folded query (llava_sdpa)": lambda: F.scaled_dot_product_attention(
            q.reshape(args.rows, args.kv_heads, groups, args.head_dim), k, v),
    }
    print(f"one layer, {args.rows} rows x {args.keys} keys, {args.heads}/{args.kv_heads} heads, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    for name, fn in cases.items():
        print(f"  {name:40s} {best_ms(fn):8.2f} ms")


def paged_layouts(args) -> None:
    dtype = getattr(torch, args.dtype)
    groups = args.heads // args.kv_heads
    block = 16
    mixes = {"8 x 200 + 1 x 7,300": [200] * 8 + [7300], "16 x 1,500": [1500] * 16, "32 x 400": [400] * 32,
             "8 x 1,512": [1512] * 8}
    print(f"one layer of a decode step, paged ({block}-token blocks), {args.heads}/{args.kv_heads} heads, "
          f"{args.dtype}, {torch.get_num_threads()} threads; ms")
    print(f"  {'contexts':22s} {'ours, scattered':>16s} {'ours, runs':>11s} {'transformers paged':>19s} "
          f"{'contiguous padded':>18s}")
    for name, lengths in mixes.items():
        _time_paged_mix(args, name, lengths, block, dtype, groups)


def _time_paged_mix(args, name: str, lengths: list[int], block: int, dtype: torch.dtype, groups: int) -> None:
    from types import SimpleNamespace

    from model_runtime.arch.attention import paged_attention
    from model_runtime.engine.blocks import BlockPool
    from model_runtime.engine.kv import KVCache, StepRow, paged_inputs

    num_blocks = sum(-(-n // block) for n in lengths) + 2
    lm = SimpleNamespace(
        config=SimpleNamespace(num_hidden_layers=1, num_attention_heads=args.heads,
                               num_key_value_heads=args.kv_heads, hidden_size=args.heads * args.head_dim,
                               head_dim=args.head_dim),
        model=SimpleNamespace(layers=[SimpleNamespace(input_layernorm=torch.nn.LayerNorm(1))],
                              embed_tokens=torch.nn.Embedding(1, 1, dtype=dtype)))
    cache = KVCache(lm, num_blocks, block)
    cache.key_cache[0].normal_()
    cache.value_cache[0].normal_()
    pool = BlockPool(num_blocks)
    perm = torch.randperm(num_blocks - 1) + 1  # scattered tables
    tables, used = [], 0
    for n in lengths:
        k = -(-n // block)
        tables.append(perm[used : used + k].tolist())
        used += k
    pool.allocate(used)
    rows = [StepRow(i, 1, n - 1, t) for i, (n, t) in enumerate(zip(lengths, tables, strict=True))]
    runs, first = [], 1  # the same contexts, each table one run of consecutive ids (read in place)
    for i, n in enumerate(lengths):
        k = -(-n // block)
        runs.append(StepRow(i, 1, n - 1, list(range(first, first + k))))
        first += k
    q = torch.randn(1, args.heads, len(lengths), args.head_dim, dtype=dtype)
    k_new = torch.randn(1, args.kv_heads, len(lengths), args.head_dim, dtype=dtype)
    module = SimpleNamespace(layer_idx=0)

    def ours(step_rows=rows):
        paged_attention(module, q, k_new, k_new, paged_inputs(cache, step_rows, torch.device("cpu")),
                        args.head_dim**-0.5)

    flat_slots = torch.cat([(torch.tensor(t)[:, None] * block + torch.arange(block)).reshape(-1)[:n]
                            for t, n in zip(tables, lengths, strict=True)])
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    kv_flat = (args.kv_heads, num_blocks * block, args.head_dim)

    def transformers_paged():
        keys = cache.key_cache[0].view(kv_flat).index_select(1, flat_slots)[None]
        values = cache.value_cache[0].view(kv_flat).index_select(1, flat_slots)[None]
        mask = (torch.arange(len(lengths))[:, None] == segment[None, :])[None, None]
        F.scaled_dot_product_attention(q, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1),
                                       attn_mask=mask)

    longest = max(lengths)
    padded_k = torch.randn(len(lengths), args.kv_heads, longest, args.head_dim, dtype=dtype)
    pad_mask = (torch.arange(longest)[None] >= (longest - torch.tensor(lengths))[:, None])[:, None, None, :]
    folded = q[0].transpose(0, 1).reshape(len(lengths), args.kv_heads, groups, args.head_dim)

    def contiguous():
        F.scaled_dot_product_attention(folded, padded_k, padded_k, attn_mask=pad_mask)

    print(f"  {name:22s} {best_ms(ours):16.2f} {best_ms(lambda: ours(runs)):11.2f} "
          f"{best_ms(transformers_paged, repeats=5):19.2f} {best_ms(contiguous):18.2f}")


def tower_attention(args) -> None:
    from transformers.models.siglip.modeling_siglip import eager_attention_forward

    from model_runtime.arch import eager_attention

    shape = (args.crops, 729, 16, 72)  # as the attention module hands them over: [B, L, H, Dh] viewed [B, H, L, Dh]
    q, k, v = (torch.randn(*shape).transpose(1, 2) for _ in range(3))
    module = torch.nn.Module().eval()
    scale = 72**-0.5
    ref = eager_attention_forward(module, q, k, v, None, scaling=scale)[0]
    print(f"\nSigLIP so400m attention, one layer, {args.crops} crops x 729 patches, float32 (ms, best of 10):")
    print(f"  transformers eager              {best_ms(lambda: eager_attention_forward(module, q, k, v, None, scale), 10):8.1f}")
    budget = eager_attention.CPU_SCORE_SLICE_BYTES
    try:
        for mib in (2, 4, 8, 16, 1 << 20):
            eager_attention.CPU_SCORE_SLICE_BYTES = mib << 20
            heads = max(1, (mib << 20) // (729 * 729 * 4))
            ms = best_ms(lambda: eager_attention.llava_eager_attention(module, q, k, v, None, scaling=scale), 10)
            same = torch.equal(eager_attention.llava_eager_attention(module, q, k, v, None, scaling=scale)[0], ref)
            label = "all heads" if mib == 1 << 20 else f"{mib} MiB ({heads} heads)"
            print(f"  llava_eager, {label:18} {ms:8.1f}   eager's bits: {same}")
    finally:
        eager_attention.CPU_SCORE_SLICE_BYTES = budget
    print(f"  SDPA (for scale)                {best_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), 10):8.1f}")


def engine_steps(args) -> None:
    from model_runtime import (
        Engine,
        EngineConfig,
        PromptInput,
        Request,
        SamplingParams,
        load_pretrained_model,
    )

    loaded = load_pretrained_model(args.model, dtype=args.dtype)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (args.keys,), generator=gen).tolist() for _ in range(args.rows)]
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                    EngineConfig(max_num_batched_tokens=args.rows * args.keys + 64, enable_prefix_caching=False))
    for i, ids in enumerate(prompts):
        engine.add_request(Request(f"r{i}", PromptInput(ids, len(ids), 0), [],
                                   SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)))
    engine.step()  # prefill
    for _ in range(2):
        engine.step()
    ms = best_ms(engine.step, repeats=8)
    print(f"engine decode step (paged), {args.rows} rows x {args.keys} tokens {ms:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--keys", type=int, default=1512)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", help="a checkpoint folder: also time whole engine decode steps")
    parser.add_argument("--paged", action="store_true", help="also time paged attention layouts")
    parser.add_argument("--tower", action="store_true", help="also time the SigLIP tower's eager attention")
    parser.add_argument("--crops", type=int, default=2, help="--tower: crops in the layer (2: a 384x384 image)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    attention_only(args)
    if args.paged:
        paged_layouts(args)
    if args.tower:
        tower_attention(args)
    if args.model:
        engine_steps(args)


if __name__ == "__main__":
    main()
