"""Decode-step cost of grammar rows against free rows, offline on a demo model (target: <= 15% more).

For each batch size, `batch` text requests are prefilled together and then decoded for `--tokens`
steps, once free and once with every row under the 20-field JSON schema of grammar_bench.py
(`ignore_eos`, so both runs decode the same number of rows each step until max_tokens; a random
model does not finish that schema in so few tokens). Only steps that decode every row and
prefill nothing are timed. Free and grammar runs alternate `--repeats` times; the median and the
fastest (least disturbed) step of each side are printed. On a shared CPU whole steps vary by more
than the grammar costs, so the grammar's own work per step is also timed alone: the sampler on
[batch, V] logits with free rows and with grammar rows (matchers part-way through a valid
instance: mask fill, unpacking, masking) plus accepting one token per row; that work over the
free step ("/ step") is the overhead that does not depend on the neighbours' load. Also printed:
the grammar compile time (cold).

    .venv/bin/python bench/structured_bench.py --model .demo/realistic --batches 1,16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from grammar_bench import instance, schema_20_fields  # beside this script

from model_runtime import (
    ChatTurn,
    Engine,
    EngineConfig,
    GrammarCompiler,
    GrammarSpec,
    Request,
    SamplingParams,
    load_pretrained_model,
)
from model_runtime.arch.cpu_linear import pack_linears
from model_runtime.engine.sampler import SamplingRow, sample


def decode_steps(engine: Engine, requests: list[Request]) -> list[float]:
    """Seconds of each step that decoded every request and prefilled nothing."""
    for r in requests:
        engine.add_request(r)
    steps = []
    while engine.has_unfinished():
        before = engine.stats()
        start = time.perf_counter()
        engine.step()
        seconds = time.perf_counter() - start
        after = engine.stats()
        is_decode = after.num_decode_steps > before.num_decode_steps and after.batch_size == len(requests)
        if is_decode and before.batch_size == len(requests):
            steps.append(seconds)
    return steps


def grammar_work(tokenizer, grammar, batch: int, vocab: int, repeats: int = 15) -> tuple[float, float, float]:
    """Median seconds of the sampler with free rows, with grammar rows, and of accepting a token per row."""
    ids = tokenizer.encode(json.dumps(instance()), add_special_tokens=False)
    positions = [5 + (i * 7) % (len(ids) - 15) for i in range(batch)]  # each row elsewhere in the instance
    matchers = [grammar.matcher() for _ in range(batch)]
    for m, n in zip(matchers, positions, strict=True):
        for t in ids[:n]:
            m.accept(t)
    params = SamplingParams(max_tokens=1, temperature=0)
    free_rows = [SamplingRow(params, None, (), ()) for _ in range(batch)]
    grammar_rows = [SamplingRow(params, None, (), (), m) for m in matchers]
    times: dict[str, list[float]] = {"free": [], "grammar": [], "accept": []}
    for _ in range(repeats):
        logits = torch.randn(batch, vocab)
        for name, rows in (("free", free_rows), ("grammar", grammar_rows)):
            x = logits.clone()
            start = time.perf_counter()
            sample(x, rows)
            times[name].append(time.perf_counter() - start)
        copies = [m.matcher.deep_copy() for m in matchers]  # accepting here must not move the matchers on
        start = time.perf_counter()
        for m, n in zip(copies, positions, strict=True):
            m.consume_token(ids[n])
        times["accept"].append(time.perf_counter() - start)
    free, constrained, accept = (statistics.median(times[k]) for k in ("free", "grammar", "accept"))
    return free, constrained, accept


def requests_for(model, batch: int, tokens: int, grammar, tag: str) -> list[Request]:
    out = []
    for i in range(batch):
        prompt = model.processor.build_prompt(
            [ChatTurn("user", f"Fill in the invoice number {i}, in JSON.")], []
        )
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        out.append(Request(f"{tag}-{i}", prompt, [], params, grammar=grammar))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(".demo/realistic"), help="a checkpoint folder")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-packed-linear", action="store_true")
    args = parser.parse_args()
    model = load_pretrained_model(str(args.model), dtype=args.dtype)
    if not args.no_packed_linear:
        pack_linears(model.model)
    batches = [int(b) for b in args.batches.split(",")]
    engine = Engine(
        model.model,
        model.tokenizer,
        model.eos_token_ids,
        EngineConfig(max_num_seqs=max(batches), max_num_batched_tokens=8192, kv_cache_memory=2**30),
    )
    start = time.perf_counter()
    grammars = GrammarCompiler(model.tokenizer, engine.vocab_size, model.eos_token_ids)
    tokenizer_s = time.perf_counter() - start
    start = time.perf_counter()
    grammar = grammars.compile(GrammarSpec("json_schema", json.dumps(schema_20_fields())))
    compile_s = time.perf_counter() - start
    print(
        f"{args.model}: vocabulary {engine.vocab_size}; grammar tokenizer {tokenizer_s:.2f} s (once), "
        f"20-field schema compiled in {compile_s * 1e3:.1f} ms"
    )
    decode_steps(engine, requests_for(model, max(batches), 4, None, "warm"))
    print(
        f"\n{'':>5} {'free step ms':>17} {'grammar step ms':>17} {'step diff':>17} {'sampler ms':>17} "
        f"{'grammar work ms':>25}\n{'batch':>5} {'median':>8} {'min':>8} {'median':>8} {'min':>8} {'median':>8} "
        f"{'min':>8} {'free':>8} {'grammar':>8} {'accept':>7} {'total':>7} {'/ step':>8}"
    )
    for batch in batches:
        free, constrained = [], []
        for k in range(args.repeats):
            free += decode_steps(engine, requests_for(model, batch, args.tokens, None, f"free{k}"))
            constrained += decode_steps(engine, requests_for(model, batch, args.tokens, grammar, f"json{k}"))
        f, g = statistics.median(free), statistics.median(constrained)
        sampler_free, sampler_grammar, accept = grammar_work(
            model.tokenizer, grammar, batch, engine.vocab_size
        )
        work = sampler_grammar - sampler_free + accept
        print(
            f"{batch:>5} {f * 1e3:>8.1f} {min(free) * 1e3:>8.1f} {g * 1e3:>8.1f} {min(constrained) * 1e3:>8.1f} "
            f"{(g / f - 1) * 100:>7.1f}% {(min(constrained) / min(free) - 1) * 100:>7.1f}% {sampler_free * 1e3:>8.2f} "
            f"{sampler_grammar * 1e3:>8.2f} {accept * 1e3:>7.2f} {work * 1e3:>7.2f} {work / f * 100:>7.2f}%"
        )
    print(
        f"\nmedian of {args.repeats} x {args.tokens - 1} decode steps per cell; torch threads "
        f"{torch.get_num_threads()}; a step = forward + sampling (+ masks)"
    )


if __name__ == "__main__":
    main()
