"""Where a decode step's time goes: offline engine steps of c text rows, against the weight-read bound.

Starts `c` text requests on the engine (no HTTP), lets their prompts finish, then times decode
steps: the median step, the share inside the runner's forward, and (with --profile) the torch
operators that took the time (self CPU time by operator and by group: linears, the output head,
attention, norms, rotary, elementwise, sampling) and what is left between them (Python). The
roofline is the bytes of the language model's weights over this machine's memory bandwidth
(a timed read of a 1 GiB tensor): a step at c=1 cannot be faster than one read of every weight.

    .venv/bin/python bench/decode_profile.py --model .demo/realistic --threads 2 --levels 1,8,16 --profile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from model_runtime import ChatTurn, Engine, EngineConfig, Request, SamplingParams, load_pretrained_model
from model_runtime.arch.cpu_linear import pack_linears

GROUPS = (  # operator name fragments -> group, first match wins
    ("mkldnn::_linear_pointwise", "linear (oneDNN packed)"),
    ("aten::addmm", "linear (MKL)"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"), ("aten::matmul", "matmul"),
    ("aten::linear", "linear (MKL)"),
    ("scaled_dot_product", "attention (SDPA)"), ("aten::_softmax", "softmax"),
    ("rms_norm", "norm"), ("aten::pow", "norm"), ("aten::rsqrt", "norm"), ("aten::mean", "norm"),
    ("aten::index", "gather / index"), ("aten::gather", "gather / index"), ("aten::cat", "copy / cat"),
    ("aten::copy_", "copy / cat"), ("aten::to", "copy / cat"), ("aten::_to_copy", "copy / cat"),
    ("aten::mul", "elementwise"), ("aten::add", "elementwise"), ("aten::silu", "elementwise"),
    ("aten::neg", "elementwise"), ("aten::sub", "elementwise"), ("aten::div", "elementwise"),
    ("argmax", "sampling"), ("topk", "sampling"), ("log_softmax", "sampling"), ("aten::sort", "sampling"),
)


def memory_bandwidth(num_bytes: int = 2**30) -> float:
    """Bytes per second of one read of a large float32 tensor (the best of 5)."""
    x = torch.ones(num_bytes // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return num_bytes / best


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every decoder layer's weights and the output head (once, even if tied)."""
    seen, total = set(), 0
    modules = [*model.decoder_layers, model.lm_head, model.model.norm]
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen:  # packed oneDNN weights have no storage pointer
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def group_of(name: str) -> str:
    return next((g for fragment, g in GROUPS if fragment in name), "other")


def profile_steps(engine: Engine, steps: int) -> tuple[float, dict[str, float], list[tuple[str, float, int]]]:
    """(wall seconds of the steps, self CPU seconds by group, top operators (name, seconds, calls))."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = time.perf_counter() - start
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        groups[group_of(event.key)] += seconds
        ops.append((event.key, seconds, event.count))
    ops.sort(key=lambda o: -o[1])
    return wall, groups, ops[:15]


def prefill_rate(loaded, words: int) -> float:
    """Prompt tokens per second of one text prompt computed in one step (the second of two runs)."""
    prompt = loaded.processor.build_prompt([ChatTurn("user", " ".join(f"w{i}" for i in range(words)))], [])
    rate = 0.0
    for _ in range(2):
        engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                        EngineConfig(max_num_seqs=1, max_num_batched_tokens=max(prompt.num_tokens, 16)))
        engine.add_request(Request("prefill", prompt, [], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)))
        start = time.perf_counter()
        engine.step()
        rate = prompt.num_tokens / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".demo/realistic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--levels", default="1,8,16", help="decode rows per step")
    parser.add_argument("--steps", type=int, default=12, help="timed decode steps per level")
    parser.add_argument("--prompt-words", type=int, default=150, help="about 229 prompt tokens, as serve_bench")
    parser.add_argument("--no-pack", action="store_true", help="plain nn.Linear (MKL) instead of oneDNN packing")
    parser.add_argument("--prefill-words", type=int, default=600, help="one prompt of about 1.1k tokens, timed alone")
    parser.add_argument("--fuse", action="store_true", help="pack q/k/v and gate/up as one matmul each (cpu_linear.py)")
    parser.add_argument("--profile", action="store_true", help="operator breakdown of the steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_pretrained_model(args.model, dtype=args.dtype)
    if not args.no_pack:
        pack_linears(loaded.model, fuse=args.fuse)
    model = loaded.model
    bandwidth = memory_bandwidth()
    weights = weight_bytes(model)
    bound = weights / bandwidth
    print(f"weights read per step {weights / 1e9:.2f} GB, memory bandwidth {bandwidth / 1e9:.1f} GB/s: "
          f"weight-read bound {bound * 1e3:.1f} ms per step ({args.dtype}, {args.threads} threads)")
    print(f"prefill: {prefill_rate(loaded, args.prefill_words):.0f} prompt tokens/s (one prompt, one step)")
    text = " ".join(f"word{i}" for i in range(args.prompt_words))
    for level in (int(x) for x in args.levels.split(",")):
        engine = Engine(model, loaded.tokenizer, loaded.eos_token_ids,
                        EngineConfig(max_num_seqs=max(level, 1), max_num_batched_tokens=8192))
        for i in range(level):
            prompt = loaded.processor.build_prompt([ChatTurn("user", f"{i} {text}")], [])
            engine.add_request(Request(f"r{i}", prompt, [], SamplingParams(max_tokens=100_000, temperature=0,
                                                                            ignore_eos=True)))
        while engine.scheduler.num_decoding < level:
            engine.step()
        for _ in range(3):
            engine.step()  # warm
        times, forward = [], []
        for _ in range(args.steps):
            f0, start = engine.runner.forward_seconds, time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
            forward.append(engine.runner.forward_seconds - f0)
        step, fwd = statistics.median(times), statistics.median(forward)
        print(f"c={level}: step {step * 1e3:.1f} ms (forward {fwd * 1e3:.1f} ms, the rest {1e3 * (step - fwd):.1f} ms); "
              f"{level / step:.1f} tok/s; bound/step {bound / step:.0%}")
        if args.profile:
            wall, groups, ops = profile_steps(engine, args.steps)
            total = sum(groups.values())
            print(f"  profiled {args.steps} steps: {wall * 1e3 / args.steps:.1f} ms/step, operators "
                  f"{total * 1e3 / args.steps:.1f} ms/step (the rest is Python between them and the profiler)")
            for group, seconds in sorted(groups.items(), key=lambda g: -g[1]):
                print(f"    {group:24s} {seconds * 1e3 / args.steps:7.2f} ms/step")
            for name, seconds, calls in ops[:10]:
                print(f"      {name[:60]:60s} {seconds * 1e3 / args.steps:7.2f} ms/step {calls // args.steps:5d} calls")
        engine.abort_all()


if __name__ == "__main__":
    main()
