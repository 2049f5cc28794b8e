"""The quantized paths on the CPU against float32 (and bfloat16 where native), in one run, same weights.

For each configuration (a dtype and a quantization: float32 with packed linears as the server
serves it, bfloat16, bitsandbytes 8-bit, 4-bit NF4) the checkpoint is loaded as the server loads it
and the real engine is stepped directly (no HTTP): prefill tokens/s of one long text prompt, and
the time of a decode step with 1 and with 8 rows (greedy, `ignore_eos`). `+plain` after a 4-bit
configuration turns off bitsandbytes' fused AVX512-BF16 4-bit kernel, so the 4-bit path of a CPU
without it (dequantize every weight on every call, then matmul) is measured here too. Each
configuration runs `--rounds` times, the rounds interleaved (the machine may be shared); every
round is printed, and the table gives the best. Beside wall-clock time it records the process's
CPU time (all threads), which a busy machine inflates far less: run with OMP_WAIT_POLICY=PASSIVE so
that a thread waiting for its peer sleeps instead of spinning on the CPU clock.

    .venv/bin/python bench/quant_bench.py --model .demo/realistic --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model_runtime import (
    ChatTurn,
    Engine,
    EngineConfig,
    LoadedModel,
    Request,
    SamplingParams,
    load_pretrained_model,
)
from model_runtime.arch.cpu_linear import pack_linears
from model_runtime.checkpoint.precision import detect_capabilities

DEFAULT_CONFIGS = ("float32:none,bfloat16:none,float32:bitsandbytes-8bit,bfloat16:bitsandbytes-8bit,"
                   "float32:bitsandbytes-4bit,bfloat16:bitsandbytes-4bit,float32:bitsandbytes-4bit+plain")
STEP_TOKENS = 4096  # one prefill chunk holds the whole prompt: the pacer stays out of the measurement


@dataclass(frozen=True)
class Measurement:
    config: str  # dtype:quantization[+plain]
    round: int
    load_s: float
    prefill_tokens_per_s: float
    decode_step_ms: dict[int, float]  # rows per step -> median ms of a decode step
    prefill_cpu_ms_per_token: float  # process CPU time (all threads) per prompt token
    decode_cpu_ms: dict[int, float]  # rows per step -> median process CPU ms of a decode step
    load_average: float  # the machine's 1-minute load average when the measurement ended (it is shared)


def load(config: str, model: str) -> LoadedModel:
    dtype, _, quantization = config.partition(":")
    quantization, plain, _ = quantization.partition("+")
    loaded = load_pretrained_model(model, dtype=dtype, quantization=quantization)
    if quantization == "none" and dtype == "float32":
        pack_linears(loaded.model)  # the server's default for float32 on the CPU (--packed-linear)
    if plain:
        import bitsandbytes as bnb

        for module in loaded.model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False  # bitsandbytes' own switch, read at each forward
    return loaded


def text_request(loaded: LoadedModel, request_id: str, words: int, max_tokens: int) -> Request:
    text = " ".join(f"word{i % 97} of the story number {request_id}." for i in range(words))
    prompt = loaded.processor.build_prompt([ChatTurn("user", text)], [])
    return Request(request_id, prompt, [], SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))


def new_engine(loaded: LoadedModel, max_num_seqs: int) -> Engine:
    return Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                  EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=STEP_TOKENS,
                               encoder_cache_bytes=0, enable_prefix_caching=False))


def prefill_rate(loaded: LoadedModel, prompt_words: int) -> tuple[float, float]:
    """Prompt tokens per second of one prompt computed in one step (its first token sampled), and
    CPU ms per prompt token."""
    engine = new_engine(loaded, 1)
    request = text_request(loaded, "prefill", prompt_words, 1)
    engine.add_request(request)
    start, cpu = time.perf_counter(), time.process_time()
    while engine.has_unfinished():
        engine.step()
    num_tokens = len(request.prompt.token_ids)
    return num_tokens / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / num_tokens


def decode_step_ms(loaded: LoadedModel, rows: int, num_steps: int) -> tuple[float, float]:
    """The median wall-clock and CPU ms of a decode step with `rows` sequences, after their prompts are in."""
    engine = new_engine(loaded, rows)
    for i in range(rows):
        engine.add_request(text_request(loaded, f"decode-{i}", 4, num_steps + 2))
    while engine.stats().num_decode_steps == 0:
        engine.step()
    times, cpu_times = [], []
    for _ in range(num_steps):
        start, cpu = time.perf_counter(), time.process_time()
        engine.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    engine.abort_all()
    return statistics.median(times) * 1e3, statistics.median(cpu_times) * 1e3


def measure(config: str, round_: int, args) -> Measurement:
    start = time.perf_counter()
    loaded = load(config, args.model)
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        decode_step_ms(loaded, 1, 2)  # warm-up: first calls pack / allocate
        rate, prefill_cpu = prefill_rate(loaded, args.prompt_words)
        steps = {rows: decode_step_ms(loaded, rows, args.decode_steps) for rows in args.rows}
    del loaded
    gc.collect()
    m = Measurement(config, round_, load_s, rate, {r: s[0] for r, s in steps.items()}, prefill_cpu,
                    {r: s[1] for r, s in steps.items()}, os.getloadavg()[0])
    print(f"[round {round_}] {config:36s} load {load_s:5.1f} s  prefill {rate:6.1f} tok/s ({prefill_cpu:5.1f} cpu ms/tok)  "
          + "  ".join(f"decode c={r} {ms:6.0f} ms ({cpu:6.0f} cpu ms)" for r, (ms, cpu) in steps.items())
          + f"  (load average {m.load_average:.1f})", flush=True)
    return m


def _best(ms: list[Measurement], rows: list[int]) -> dict[str, float]:
    """Per column, the best of the rounds (the least disturbed by the rest of the machine)."""
    best = {"prefill tok/s": max(m.prefill_tokens_per_s for m in ms),
            "prefill cpu ms/tok": min(m.prefill_cpu_ms_per_token for m in ms)}
    for r in rows:
        best[f"decode c={r} ms"] = min(m.decode_step_ms[r] for m in ms)
        best[f"decode c={r} cpu ms"] = min(m.decode_cpu_ms[r] for m in ms)
    return best


def table(measurements: list[Measurement], rows: list[int]) -> str:
    """Best of the rounds per cell, and in brackets its cost against float32 (>1: slower)."""
    groups: dict[str, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.config, []).append(m)
    best = {config: _best(ms, rows) for config, ms in groups.items()}
    base = best.get("float32:none")
    columns = list(next(iter(best.values())))
    lines = ["| configuration | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for config, cells in best.items():
        text = []
        for column, value in cells.items():
            cell = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            if base:
                cost = base[column] / value if column == "prefill tok/s" else value / base[column]
                cell += f" ({cost:.2f}x)"
            text.append(cell)
        lines.append(f"| {config} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".demo/realistic", help="checkpoint folder (llava-serve make-demo)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="dtype:quantization[+plain], comma separated")
    parser.add_argument("--rows", default="1,8", help="decode rows per step, comma separated")
    parser.add_argument("--prompt-words", type=int, default=40, help="prefill prompt length, in sentences")
    parser.add_argument("--decode-steps", type=int, default=8, help="decode steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quant_bench.json"))
    args = parser.parse_args()
    args.rows = [int(v) for v in args.rows.split(",") if v]
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = sorted(detect_capabilities("cpu") & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU flags {', '.join(flags)}", flush=True)
    measurements = []
    for round_ in range(1, args.rounds + 1):
        for config in args.configs.split(","):
            measurements.append(measure(config, round_, args))
    print(table(measurements, args.rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(m) for m in measurements], indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
