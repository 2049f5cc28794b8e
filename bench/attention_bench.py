"""Decode-step attention on the CPU: transformers' SDPA paths against llava_sdpa's folded query.

One decode step of grouped-query attention (default: Qwen2-0.5B's 14 query / 2 KV heads of 64,
8 rows, 1,512 cached keys, bf16), timed for each way of calling SDPA; then, with --model, whole
engine decode steps of a checkpoint loaded with `sdpa` and with `llava_sdpa`.

    .venv/bin/python bench/attention_bench.py [--threads 2] [--model .demo/realistic]
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


def engine_steps(args) -> None:
    from model_runtime import (
        Engine,
        EngineConfig,
        PromptInput,
        Request,
        SamplingParams,
        load_pretrained_model,
    )
    from model_runtime.arch.attention import ATTN_IMPLEMENTATION

    loaded = load_pretrained_model(args.model, dtype=args.dtype)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (args.keys,), generator=gen).tolist() for _ in range(args.rows)]
    for impl in ("sdpa", ATTN_IMPLEMENTATION):
        loaded.model.config._attn_implementation = impl
        engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                        EngineConfig(max_prefill_tokens=args.rows * args.keys + 64))
        for i, ids in enumerate(prompts):
            engine.add_request(Request(f"r{i}", PromptInput(ids, len(ids), 0), [],
                                       SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)))
        engine.step()  # prefill
        for _ in range(2):
            engine.step()
        ms = best_ms(engine.step, repeats=8)
        print(f"engine decode step, {args.rows} rows x {args.keys} tokens, {impl:10s} {ms:8.1f} ms")


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    attention_only(args)
    if args.model:
        engine_steps(args)


if __name__ == "__main__":
    main()
