"""Decode-step cost of grammar rows against free rows, offline on a demo model (target: <= 15% more).

For each batch size, `batch` text requests are prefilled together and then decoded for `--tokens`
steps, once free and once with every row under the 20-field JSON schema of grammar_bench.py
(`ignore_eos`, so both runs decode the same number of rows each step until max_tokens; a random
model does not finish that schema in so few tokens). Only steps that decode every row and
prefill nothing are timed. Free and grammar runs alternate `--repeats` times and the median step
of each side is kept (the machine is shared). Also printed: the grammar compile time (cold) and
the mask fill alone for the batch. Prints a table.

    .venv/bin/python bench/structured_bench.py --model .demo/realistic --batches 1,16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from grammar_bench import schema_20_fields  # beside this script

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
from model_runtime.engine.grammar import refused_tokens


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
    print(f"\n{'batch':>5} {'free step ms':>13} {'grammar step ms':>16} {'overhead':>9} {'mask fill ms':>13}")
    for batch in batches:
        free, constrained = [], []
        for k in range(args.repeats):
            free += decode_steps(engine, requests_for(model, batch, args.tokens, None, f"free{k}"))
            constrained += decode_steps(engine, requests_for(model, batch, args.tokens, grammar, f"json{k}"))
        matchers = [grammar.matcher() for _ in range(batch)]
        fills = []
        for _ in range(20):
            start = time.perf_counter()
            refused_tokens(matchers, engine.vocab_size)
            fills.append(time.perf_counter() - start)
        f, g = statistics.median(free), statistics.median(constrained)
        print(
            f"{batch:>5} {f * 1e3:>13.1f} {g * 1e3:>16.1f} {(g / f - 1) * 100:>8.1f}% "
            f"{statistics.median(fills) * 1e3:>13.2f}"
        )
    print(
        f"\nmedian of {args.repeats} x {args.tokens - 1} decode steps per cell; torch threads "
        f"{torch.get_num_threads()}; a step = forward + sampling (+ masks)"
    )


if __name__ == "__main__":
    main()
