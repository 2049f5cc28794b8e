"""Batch benchmark: the Batch API against interactive traffic and against chat, one server, one run, side by side.

One llava-serve process (this checkout) on 127.0.0.1; every request is a chat with a distinct
image (`--image-size`, a new image per line and per phase, so no cache carries over) and exactly
`--max-tokens` output tokens (ignore_eos). Phases, in order:

- `idle`: an interactive client sends one streamed text chat at a time (`--interactive`
  requests): TTFT and token gap p50 on an otherwise idle server;
- `under_batch`: the same client while a `--lines`-line batch runs: TTFT and token gap p50, and
  the server's RSS sampled through the batch (first, last and largest: memory should stay flat);
- `batch`: another batch of `--lines` lines alone: output tokens per second, creation to completed;
- `chat_cN`: the same number of requests through /v1/chat/completions at concurrency N
  (`--concurrency`): output tokens per second.

Prints each number with the issue's target ratio and writes batch_bench.json under --out.

    .venv/bin/python bench/batch_bench.py --model .demo/realistic --threads 2 --out bench/results/batch
    .venv/bin/python bench/batch_bench.py --model .demo/tiny --lines 40 --interactive 8 --out /tmp/batch
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_bench, the sibling
from serve_bench import Stream, chat, client, free_port, image_url, process_rss, user, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench"


class BenchServer:
    """Just what serve_bench's `chat` reads of a server, plus the process."""

    def __init__(self, args, out: Path) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.model = MODEL_NAME
        self.is_streamed = True
        self.log_path = out / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "server.cli", "serve", "--model", args.model, "--dtype", args.dtype,
               "--port", str(port), "--served-model-name", MODEL_NAME, "--device", args.device,
               "--data-dir", str(out / "data"), "--max-batch-lines-in-flight", str(args.in_flight),
               "--max-file-mb", "256", "--max-request-body-mb", "256", "--encoder-cache-mb", str(args.encoder_cache_mb)]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_ready(self.base_url + "/ready", self.process, self.log_path, args.start_timeout)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def chat_body(args, image: str) -> dict:
    return {"model": MODEL_NAME, "messages": [user("Write a caption for this image.", image)],
            "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}


def batch_file(args, seed: int) -> bytes:
    lines = [{"custom_id": f"img-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": chat_body(args, image_url(args.image_size, args.image_size, seed + i))}
             for i in range(args.lines)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def interactive(server: BenchServer, args, until: asyncio.Event | None = None) -> dict:
    """One streamed text chat at a time: `--interactive` of them, or until `until` is set."""
    streams: list[Stream] = []
    async with client() as http:
        while (not until.is_set()) if until is not None else len(streams) < args.interactive:
            text = f"Question {len(streams)}: tell me about the weather."
            streams.append(await chat(http, server, [user(text)], args.max_tokens))
    ok = [s for s in streams if s.error is None]
    return {"requests": len(streams), "errors": len(streams) - len(ok), "ttft_p50_s": p50([s.ttft for s in ok]),
            "gap_p50_s": p50([g for s in ok for g in s.gaps()])}


async def run_batch(server: BenchServer, args, seed: int, rss: list[int] | None = None) -> dict:
    """Upload, create, poll until done (sampling RSS); output tokens per second from creation to completed."""
    api = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    file = await api.files.create(file=("bench.jsonl", io.BytesIO(batch_file(args, seed))), purpose="batch")
    started = time.monotonic()
    batch = await api.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.5)
        if rss is not None:
            rss.append(process_rss(server.process.pid))
        batch = await api.batches.retrieve(batch.id)
    seconds = time.monotonic() - started
    tokens = 0
    if batch.output_file_id:
        for raw in (await api.files.content(batch.output_file_id)).text.splitlines():
            tokens += json.loads(raw)["response"]["body"]["usage"]["completion_tokens"]
    running = batch.completed_at - batch.in_progress_at if batch.completed_at and batch.in_progress_at else None
    return {"status": batch.status, "completed": batch.request_counts.completed, "failed": batch.request_counts.failed,
            "seconds": seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds,
            "in_progress_to_completed_s": running}  # the server's own stamps (whole seconds)


async def chat_throughput(server: BenchServer, args, concurrency: int, seed: int) -> dict:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=3600) as http:
        async def one(i: int) -> int:
            async with slots:
                body = chat_body(args, image_url(args.image_size, args.image_size, seed + i))
                r = await http.post(server.base_url + "/v1/chat/completions", json=body)
                return r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0

        started = time.monotonic()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(args.lines))))
    seconds = time.monotonic() - started
    return {"concurrency": concurrency, "seconds": seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds}


async def under_batch(server: BenchServer, args) -> dict:
    done, rss = asyncio.Event(), []

    async def batch_then_stop() -> dict:
        try:
            return await run_batch(server, args, seed=10_000, rss=rss)
        finally:
            done.set()

    batch, chats = await asyncio.gather(batch_then_stop(), interactive(server, args, until=done))
    mib = [r / 2**20 for r in rss]
    return {"interactive": chats, "batch": batch,
            "rss_mib": {"first": mib[0] if mib else None, "last": mib[-1] if mib else None,
                        "max": max(mib, default=None), "samples": [round(m) for m in mib]}}


async def measure(server: BenchServer, args) -> dict:
    async with client() as http:  # warm-up: the image path once
        await chat(http, server, [user("warm up", image_url(args.image_size, args.image_size, 1))], 4)
    results: dict = {"idle": await interactive(server, args)}
    results["under_batch"] = await under_batch(server, args)
    results["batch"] = await run_batch(server, args, seed=20_000)
    for c in args.concurrency:
        results[f"chat_c{c}"] = await chat_throughput(server, args, c, seed=30_000 + 1000 * c)
    return results


def report(results: dict, args) -> None:
    idle, busy = results["idle"], results["under_batch"]["interactive"]
    best = max(results[f"chat_c{c}"]["tokens_per_s"] for c in args.concurrency)
    rss = results["under_batch"]["rss_mib"]
    rows = [
        ("interactive TTFT p50, idle / under batch (s)", f"{idle['ttft_p50_s']:.3f} / {busy['ttft_p50_s']:.3f}",
         f"{busy['ttft_p50_s'] / idle['ttft_p50_s']:.2f}x (target <= 1.25x)"),
        ("interactive token gap p50, idle / under batch (s)", f"{idle['gap_p50_s']:.4f} / {busy['gap_p50_s']:.4f}",
         f"{busy['gap_p50_s'] / idle['gap_p50_s']:.2f}x (target <= 1.25x)"),
        ("batch alone (output tokens/s)", f"{results['batch']['tokens_per_s']:.1f}",
         f"{results['batch']['tokens_per_s'] / best:.2f}x the best chat level (target >= 0.9x)"),
        *((f"chat at concurrency {c} (output tokens/s)", f"{results[f'chat_c{c}']['tokens_per_s']:.1f}", "")
          for c in args.concurrency),
        ("server RSS during the batch, first / max / last (MiB)",
         f"{rss['first']:.0f} / {rss['max']:.0f} / {rss['last']:.0f}", "flat (target)"),
    ]
    for name, value, note in rows:
        print(f"{name:<56} {value:<24} {note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / ".demo" / "realistic"))
    parser.add_argument("--lines", type=int, default=500, help="batch lines, and chat requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--interactive", type=int, default=20, help="interactive chats on the idle server")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--in-flight", type=int, default=8, help="--max-batch-lines-in-flight")
    parser.add_argument("--encoder-cache-mb", type=int, default=512,
                        help="the server's (its default; every image here is new, so the cache only fills: 0 shows "
                        "the RSS without it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch"))
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = BenchServer(args, out)
    try:
        results = asyncio.run(measure(server, args))
    finally:
        server.stop()
    results["settings"] = {k: v for k, v in vars(args).items()}
    (out / "batch_bench.json").write_text(json.dumps(results, indent=2))
    report(results, args)


if __name__ == "__main__":
    main()
