"""Offline decode steps with one long row among short ones: what the long row costs the others.

Eight text requests decode; a long text prompt (`--long-tokens`) is added and computed in chunks
beside them; once it decodes too, steps are timed with long rows read in place (the default) and
with every row gathered (`kv.IN_PLACE_MAX_RUNS = 0`), turn about; then the long request is aborted
and the eight rows are timed again at the contexts they have reached. Prints the median step of
each and the ratios: against the eight rows before the long prompt came, and against the eight
rows alone at the same contexts (the long row's own cost). No HTTP; float32 unless told.

    .venv/bin/python bench/mixed_steps.py --model .demo/realistic --threads 2 --long-tokens 7300
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model_runtime import ChatTurn, Engine, EngineConfig, Request, SamplingParams, load_pretrained_model
from model_runtime.arch.cpu_linear import pack_linears
from model_runtime.engine import kv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".demo/realistic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--long-tokens", type=int, default=7300)
    parser.add_argument("--rounds", type=int, default=6, help="turns of 4 steps each way")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_pretrained_model(args.model, dtype=args.dtype)
    pack_linears(loaded.model)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids, EngineConfig(max_num_seqs=16))

    def request(request_id: str, text: str) -> Request:
        prompt = loaded.processor.build_prompt([ChatTurn("user", text)], [])
        return Request(request_id, prompt, [], SamplingParams(max_tokens=100_000, temperature=0, ignore_eos=True))

    def steps(count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        return times

    for i in range(8):
        engine.add_request(request(f"text-{i}", f"Tell a long story about topic {i}."))
    steps(20)
    before = steps(8)
    words = args.long_tokens
    for _ in range(4):  # words of the long prompt, scaled until it has about --long-tokens tokens
        long = request("long", " ".join(f"word{i % 500}" for i in range(words)))
        words = int(words * args.long_tokens / long.num_prompt_tokens)
    engine.add_request(long)
    start, count = time.perf_counter(), 0
    while not any(s.request is long and s.is_decoding for s in engine.scheduler.running):
        engine.step()
        count += 1
    seq = next(s for s in engine.scheduler.running if s.request is long)
    runs = 1 + sum(1 for a, b in zip(seq.block_ids, seq.block_ids[1:], strict=False) if b != a + 1)
    print(f"long prompt: {long.num_prompt_tokens} tokens computed in {time.perf_counter() - start:.1f} s "
          f"({count} steps); its blocks form {runs} run(s)")
    in_place, gathered, max_runs = [], [], kv.IN_PLACE_MAX_RUNS
    for _ in range(args.rounds):
        kv.IN_PLACE_MAX_RUNS = max_runs
        in_place += steps(4)
        kv.IN_PLACE_MAX_RUNS = 0
        gathered += steps(4)
    kv.IN_PLACE_MAX_RUNS = max_runs
    engine.abort_request("long")
    alone = steps(8)
    med = {name: statistics.median(t) for name, t in
           [("before", before), ("in place", in_place), ("gathered", gathered), ("alone", alone)]}
    print("median step s: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    for name in ("in place", "gathered"):
        print(f"{name}: {med[name] / med['before']:.2f}x the eight rows before, "
              f"{med[name] / med['alone']:.2f}x the eight rows alone at the same contexts")


if __name__ == "__main__":
    main()
