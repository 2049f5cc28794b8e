"""Offline engine benchmark: continuous batching vs. requests run one by one with transformers `generate`.

For each demo model (`llava-serve make-demo --size small|realistic`), each kind of request (text
only, or one image) and each concurrency level, all requests are given to the engine at once and
stepped to completion (no HTTP). The baseline runs the same requests one after another with
`model.generate` on the same weights (media encoded and spliced by the same model code), in the
same process. Prints a table, writes a JSON file and a PNG plot. Greedy decoding, `ignore_eos`.

NOTE: the baseline runs one request at a time, so its throughput does not depend on the
concurrency level: next to each engine run it is sampled over `--baseline-requests` requests of
the same set, and the best of `--repeats` alternating samples of each side is kept (the 2-core
machine is shared; this keeps both sides of a ratio under the same load and the run short).

    .venv/bin/python bench/engine_bench.py --models small,realistic --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_runtime import (
    ChatTurn,
    Engine,
    EngineConfig,
    LoadedModel,
    Request,
    SamplingParams,
    load_pretrained_model,
)
from model_runtime.checkpoint_tools import make_demo
from model_runtime.inputs import EncodedItem

TOPICS = ("a lighthouse", "the sea", "a mountain village", "a robot", "an old library", "a desert city",
          "the northern lights", "a market at dawn")


@dataclass(frozen=True)
class Case:
    """One benchmark cell."""

    model: str
    kind: str  # "text" | "image"
    concurrency: int
    num_output_tokens: int  # per request


@dataclass
class Result:
    case: Case
    engine_tokens_per_s: float
    engine_tpot_ms: float  # mean time per output token after the first, per request
    engine_ttft_s: float  # mean time to first token
    engine_overhead: float  # share of step time outside the LM forward and the encoder
    engine_decode_overhead: float  # the same, decode steps only
    sequential_tokens_per_s: float
    sequential_tpot_ms: float
    same_tokens: float  # share of requests whose greedy tokens equal the baseline's

    @property
    def speedup(self) -> float:
        return self.engine_tokens_per_s / self.sequential_tokens_per_s


def build_requests(loaded: LoadedModel, kind: str, count: int, max_tokens: int, image_side: int) -> list[Request]:
    processor = loaded.processor
    requests = []
    for i in range(count):
        text = f"Write a long and detailed story about {TOPICS[i % len(TOPICS)]}, number {i}."
        media = []
        if kind == "image":
            rng = np.random.default_rng(i)  # a different image per request: no encoder-cache hits
            pixels = rng.integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
            media = [processor.process_image(Image.fromarray(pixels), single_crop=False)]
            text = "<image>\n" + text
        prompt = processor.build_prompt([ChatTurn("user", text)], media)
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        requests.append(Request(f"{kind}-{i}", prompt, media, params))
    return requests


def run_engine(loaded: LoadedModel, requests: list[Request], max_num_batched_tokens: int | None):
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                    EngineConfig(max_num_seqs=max(32, len(requests)), max_num_batched_tokens=max_num_batched_tokens,
                                 encoder_cache_bytes=0, enable_prefix_caching=False))
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    finals = []
    decode_step = decode_forward = 0.0
    start = time.perf_counter()
    for r in requests:
        r.arrival_time = time.monotonic()
        engine.add_request(r)
    while engine.has_unfinished():
        before = engine.stats()
        outputs = engine.step()
        after = engine.stats()
        if after.num_decode_steps > before.num_decode_steps:
            decode_step += after.step_seconds - before.step_seconds
            decode_forward += after.forward_seconds - before.forward_seconds
        for o in outputs:
            tokens[o.request_id] += o.new_token_ids
            if o.finished:
                finals.append(o)
    elapsed = time.perf_counter() - start
    stats = engine.stats()
    num_tokens = sum(len(t) for t in tokens.values())
    tpot = [(o.metrics.finished_time - o.metrics.first_token_time) / (o.num_output_tokens - 1) for o in finals]
    ttft = [o.metrics.first_token_time - o.metrics.arrival_time for o in finals]
    overhead = 1 - (stats.forward_seconds + stats.encoder_seconds) / stats.step_seconds
    decode_overhead = 1 - decode_forward / decode_step if decode_step else 0.0
    return tokens, num_tokens / elapsed, statistics.mean(tpot) * 1e3, statistics.mean(ttft), overhead, decode_overhead


class _TimingStreamer:
    """`generate` calls put() with the prompt, then once per new token: record when each call comes."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def run_sequential(loaded: LoadedModel, requests: list[Request], attention: str = "sdpa"):
    model = loaded.model
    engine_attention = model.config._attn_implementation
    model.config._attn_implementation = attention  # the baseline's kernel (see --baseline-attention)
    try:
        return _run_sequential(loaded, requests)
    finally:
        model.config._attn_implementation = engine_attention


def _run_sequential(loaded: LoadedModel, requests: list[Request]):
    model = loaded.model
    pad = loaded.tokenizer.pad_token_id or loaded.eos_token_ids[0]
    tokens: dict[str, list[int]] = {}
    tpot = []
    start = time.perf_counter()
    for r in requests:
        items = [EncodedItem(m.modality, f) for m, f in zip(r.media, [e.features for e in model.encode_media(r.media)],
                                                            strict=True)]
        embeds, mask, _ = model.prepare_inputs_for_multimodal([r.prompt.token_ids], [items], padding_side="left")
        streamer = _TimingStreamer()
        n = r.params.max_tokens
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=pad, streamer=streamer)
        tokens[r.request_id] = out[0, -n:].tolist()
        times = streamer.times[-n:]
        tpot.append((times[-1] - times[0]) / (n - 1))
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(t) for t in tokens.values())
    return tokens, num_tokens / elapsed, statistics.mean(tpot) * 1e3


def ensure_demo(size: str, root: Path) -> Path:
    path = root / size
    if not (path / "config.json").exists():
        print(f"building the {size} demo checkpoint in {path} (llava-serve make-demo --size {size})", flush=True)
        make_demo(size, path)
    return path


def bench_model(name: str, path: Path, args, save) -> list[Result]:
    loaded = load_pretrained_model(str(path), dtype=args.dtype, device=args.device, quantization=args.quantization)
    warm = build_requests(loaded, "image", 2, 4, args.image_side)
    run_engine(loaded, warm, args.max_num_batched_tokens)
    run_sequential(loaded, build_requests(loaded, "image", 1, 4, args.image_side), args.baseline_attention)
    results = []
    for kind, levels, max_tokens in (("text", args.text_concurrency, args.text_tokens),
                                     ("image", args.image_concurrency, args.image_tokens)):
        for level in levels:
            requests = build_requests(loaded, kind, max(level, args.baseline_requests), max_tokens, args.image_side)
            best_engine = best_base = None
            # NOTE: the machine is shared: engine runs and baseline samples alternate, and the best of
            # each is kept, so both sides of a ratio saw the same conditions.
            for rep in range(args.repeats):
                engine = run_engine(loaded, _fresh(requests[:level]), args.max_num_batched_tokens)
                sample = requests[(rep * args.baseline_requests) % len(requests):][: args.baseline_requests]
                base = run_sequential(loaded, _fresh(sample), args.baseline_attention)
                best_engine = engine if best_engine is None or engine[1] > best_engine[1] else best_engine
                best_base = base if best_base is None or base[1] > best_base[1] else best_base
                if sum(len(t) for t in engine[0].values()) / engine[1] > args.max_repeat_seconds:
                    break  # a long cell: one run of each side
            tokens, tps, tpot, ttft, overhead, decode_overhead = best_engine
            base_tokens, base_tps, base_tpot = best_base
            same = [tokens[rid] == ids for rid, ids in base_tokens.items() if rid in tokens]
            result = Result(Case(name, kind, level, max_tokens), tps, tpot, ttft, overhead, decode_overhead,
                            base_tps, base_tpot, sum(same) / len(same) if same else float("nan"))
            print(f"[{name} {kind} x{level}] engine {tps:.1f} tok/s, sequential {base_tps:.1f} tok/s "
                  f"({result.speedup:.2f}x); TPOT {tpot:.1f} vs {base_tpot:.1f} ms; "
                  f"outside forward {overhead:.1%} (decode {decode_overhead:.1%})", flush=True)
            results.append(result)
            save(results)
    return results


def _fresh(requests: list[Request]) -> list[Request]:
    """New Request objects for the same inputs (a Request is consumed by a run)."""
    return [Request(r.request_id, r.prompt, r.media, r.params) for r in requests]


def table(results: list[Result]) -> str:
    lines = [
        "| model | kind | concurrent | engine tok/s | sequential tok/s | speedup | engine TPOT ms | "
        "sequential TPOT ms | engine TTFT s | outside forward (all / decode) | same tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        c = r.case
        lines.append(
            f"| {c.model} | {c.kind} ({c.num_output_tokens} tok) | {c.concurrency} | {r.engine_tokens_per_s:.1f} | "
            f"{r.sequential_tokens_per_s:.1f} | {r.speedup:.2f}x | {r.engine_tpot_ms:.1f} | {r.sequential_tpot_ms:.1f} | "
            f"{r.engine_ttft_s:.2f} | {r.engine_overhead:.1%} / {r.engine_decode_overhead:.1%} | {r.same_tokens:.0%} |"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.case.model for r in results))
    kinds = [k for k in ("text", "image") if any(r.case.kind == k for r in results)]
    fig, axes = plt.subplots(len(models), len(kinds), figsize=(5.2 * len(kinds), 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            cells = sorted((r for r in results if (r.case.model, r.case.kind) == (model, kind)),
                           key=lambda r: r.case.concurrency)
            if not cells:
                ax.set_visible(False)
                continue
            x = [r.case.concurrency for r in cells]
            ax.plot(x, [r.engine_tokens_per_s for r in cells], "o-", label="engine (continuous batching)")
            ax.plot(x, [r.sequential_tokens_per_s for r in cells], "s--", label="one by one, transformers generate")
            for r in cells:
                ax.annotate(f"{r.speedup:.1f}x", (r.case.concurrency, r.engine_tokens_per_s),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(x, [str(v) for v in x])
            ax.set_ylim(bottom=0, top=max(r.engine_tokens_per_s for r in cells) * 1.18)
            ax.set_title(f"{model}: {kind}, {cells[0].case.num_output_tokens} output tokens each", fontsize=10)
            ax.set_xlabel("concurrent requests")
            ax.set_ylabel("output tokens / s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def load_results(path: Path) -> list[Result]:
    rows = json.loads(path.read_text())
    return [Result(case=Case(**r.pop("case")), **{k: v for k, v in r.items() if k != "speedup"}) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,realistic", help="demo sizes, comma separated")
    parser.add_argument("--demo-root", type=Path, default=Path(".demo"), help="where the demo checkpoints live")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--baseline-attention", default="sdpa",
                        help="the one-by-one baseline's attention: sdpa (transformers' stock kernel, what plain "
                             "`generate` uses) or llava_sdpa (the engine's; isolates the gain of batching alone)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--quantization", default="none", help="none | bitsandbytes-8bit | bitsandbytes-4bit")
    parser.add_argument("--text-concurrency", default="1,4,16,32")
    parser.add_argument("--image-concurrency", default="1,4,8,16,32")
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--image-tokens", type=int, default=64)
    parser.add_argument("--image-side", type=int, default=384)
    parser.add_argument("--baseline-requests", type=int, default=2, help="sequential requests per sample")
    parser.add_argument("--repeats", type=int, default=2, help="engine runs / baseline samples per cell (best kept)")
    parser.add_argument("--max-repeat-seconds", type=float, default=240.0,
                        help="cells whose engine run takes longer are not repeated")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="the engine's step budget (default: its own for the device)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--replot", type=Path, help="only redraw the table and plot from this JSON file")
    args = parser.parse_args()
    if args.replot:
        results = load_results(args.replot)
        print(table(results))
        plot(results, args.replot.with_suffix(".png"))
        return
    args.text_concurrency = [int(v) for v in args.text_concurrency.split(",") if v]
    args.image_concurrency = [int(v) for v in args.image_concurrency.split(",") if v]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, dtype {args.dtype}, "
          f"quantization {args.quantization}", flush=True)
    results: list[Result] = []

    def save(more: list[Result]) -> None:  # after every cell: a long run stopped early keeps its rows
        rows = results + more
        (args.out / "engine_bench.json").write_text(
            json.dumps([{**asdict(r), "speedup": r.speedup} for r in rows], indent=2) + "\n")

    for name in args.models.split(","):
        results += bench_model(name, ensure_demo(name, args.demo_root), args, save)
    print(table(results))
    plot(results, args.out / "engine_bench.png")
    print(f"wrote {args.out / 'engine_bench.json'} and {args.out / 'engine_bench.png'}")


if __name__ == "__main__":
    main()
