"""Soak: mixed traffic for a long time at a modest rate; the server's resources must stay flat.

Requests start at `rate` per second (open loop, at most `MAX_IN_FLIGHT` at once): text (plain and
streamed), image, video (with its audio track) and audio chats, a tenth of them cancelled by the
client at a random moment, and a share of bad inputs (chat-body mutants and media mutants). Every
`SAMPLE_S` the server's resident memory (alone and with its decoder processes), open file
descriptors, threads and descendant processes are sampled. Drift compares the median of the first
tenth of the samples (after warm-up) with the median of the last tenth, and the middle tenth with
the last (the second half). Violations: any 5xx or unanswered request, more threads, processes
or descriptors (beyond `FD_SLACK`) at the end than in the first tenth, or resident memory that
still grows in the second half by more than `MAX_RSS_SECOND_HALF_DRIFT`: a leak grows for as long
as the traffic lasts, while allocator arenas and bounded caches level off (the whole-run drift
is reported).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx

from bench.stress.fuzz import Tally
from bench.stress.media import FORMATS, body, pool_size, seed_file
from bench.stress.mutators import chat_mutant, media_mutant
from bench.stress.server import MODEL_NAME, Server, as_dict, start_server, stop_server

MAX_IN_FLIGHT = 16
SAMPLE_S = 10.0
CANCEL_SHARE = 0.1
BAD_SHARE = 0.15
MAX_RSS_SECOND_HALF_DRIFT = 0.05
FD_SLACK = 2  # a client socket the server has not closed yet at the last sample; a leak grows past it
KINDS = [("text", 0.3), ("stream", 0.2), ("IMAGE", 0.15), ("VIDEO", 0.1), ("AUDIO", 0.1), ("bad", BAD_SHARE)]
MEDIA = {
    "IMAGE": ["PNG", "JPEG", "WEBP", "GIF", "BMP"],
    "VIDEO": ["MP4", "WEBM", "MKV"],
    "AUDIO": ["WAV", "FLAC", "MP3", "OGG"],
}


def make_request(rng: random.Random, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """(kind, JSON body bytes) of one soak request."""
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    text = f"Tell me about {rng.randrange(10**6)}."
    if kind in ("text", "stream"):
        payload = {
            "model": MODEL_NAME,
            "max_tokens": rng.randint(1, 24),
            "stream": kind == "stream",
            "messages": [{"role": "user", "content": text}],
        }
    elif kind in MEDIA:
        fmt = rng.choice(MEDIA[kind])
        payload = body(fmt, seeds[fmt])
        payload["max_tokens"] = rng.randint(1, 8)
    elif rng.random() < 0.5:
        return "bad", chat_mutant(rng, MODEL_NAME)[1]
    else:
        fmt = rng.choice(FORMATS)
        payload = body(fmt, media_mutant(rng, seeds[fmt])[1])
    return kind, json.dumps(payload).encode()


async def one(
    client: httpx.AsyncClient, kind: str, content: bytes, cancel_after: float | None, tally: Tally
) -> None:
    async def send() -> None:
        try:
            async with client.stream(
                "POST", "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
            ) as response:
                data = await response.aread()
                if (
                    response.status_code == 200
                    and b'"stream": true' in content
                    and not data.rstrip().endswith(b"data: [DONE]")
                ):
                    tally.violate("torn stream", kind=kind, tail=data[-200:].decode("utf-8", "replace"))
                tally.record(f"soak {kind}", response.status_code, data, content[:200])
        except httpx.HTTPError as e:
            tally.record(f"soak {kind}", 0, repr(e).encode(), content[:200])

    if cancel_after is None:
        await send()
        return
    try:
        await asyncio.wait_for(send(), cancel_after)
    except TimeoutError:
        tally.sources[f"soak {kind} cancelled"] += 1


async def traffic(
    server: Server, seconds: float, rate: float, seed: int, tally: Tally, samples: list, sample_s: float
) -> dict:
    rng = random.Random(seed)
    seeds = {fmt: seed_file(fmt) for fmt in FORMATS}
    in_flight: set[asyncio.Task] = set()
    skipped = 0
    start = time.monotonic()
    next_sample = start
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:
        k = 0
        while (now := time.monotonic()) < start + seconds:
            if now >= next_sample:
                samples.append(await asyncio.to_thread(server.sample))
                next_sample += sample_s
            if len(in_flight) >= MAX_IN_FLIGHT:
                skipped += 1
            else:
                kind, content = make_request(rng, seeds)
                cancel = rng.uniform(0.0, 0.5) if kind != "bad" and rng.random() < CANCEL_SHARE else None
                task = asyncio.create_task(one(client, kind, content, cancel, tally))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            k += 1
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
        await asyncio.gather(*in_flight)
    return {"requests_started": k - skipped, "skipped_at_cap": skipped}


def drift(samples: list, field: str, window: int) -> dict:
    first = [getattr(s, field) for s in samples[:window]]
    middle = [getattr(s, field) for s in samples[len(samples) // 2 - window // 2 :][:window]]
    last = [getattr(s, field) for s in samples[-window:]]
    return {
        "first": statistics.median(first),
        "middle": statistics.median(middle),
        "last": statistics.median(last),
        "first_max": max(first),
        "last_max": max(last),
        "min": min(getattr(s, field) for s in samples),
        "max": max(getattr(s, field) for s in samples),
    }


def run(
    model: str, logs: Path, seconds: float, rate: float, seed: int = 0, warmup_s: float | None = None
) -> dict:
    server = start_server(model, logs, "--media-workers", "2", name="soak")
    try:
        return check(server, seconds, rate, seed, min(120.0, seconds / 6) if warmup_s is None else warmup_s)
    finally:
        stop_server(server)


def check(
    server: Server, seconds: float, rate: float, seed: int, warmup_s: float, sample_s: float = SAMPLE_S
) -> dict:
    tally = Tally()
    samples: list = []
    media_workers = len(server.decoder_pids())
    asyncio.run(traffic(server, warmup_s, rate, seed + 1, Tally(), [], sample_s))  # caches, pools, allocator
    counts = asyncio.run(traffic(server, seconds, rate, seed, tally, samples, sample_s))
    gauges = server.idle_gauges()
    pool_size(server, media_workers)  # a decoder killed for a cancelled request is being replaced
    samples.append(server.sample())
    window = max(1, len(samples) // 10)
    figures = {
        f: drift(samples, f, window)
        for f in ("rss_bytes", "rss_total_bytes", "num_fds", "num_threads", "num_processes")
    }
    rss = figures["rss_bytes"]
    rss_drift = (rss["last"] - rss["first"]) / rss["first"]
    second_half = (rss["last"] - rss["middle"]) / rss["middle"]
    for field, slack in (("num_fds", FD_SLACK), ("num_threads", 0), ("num_processes", 0)):
        if figures[field]["last"] > figures[field]["first_max"] + slack:
            tally.violate(f"{field} grew", **figures[field])
    if second_half > MAX_RSS_SECOND_HALF_DRIFT:
        tally.violate("rss grew in the second half", drift=round(second_half, 3))
    if any(gauges.values()):
        tally.violate("leak", gauges=gauges)
    summary = tally.summary()
    return {
        "seconds": seconds,
        "warmup_s": warmup_s,
        "rate_per_s": rate,
        **counts,
        "cases": summary["cases"],
        "by_source": summary["by_source"],
        "statuses": summary["statuses"],
        "num_5xx": summary["num_5xx"],
        "violations": summary["violations"],
        "examples": summary["examples"],
        "rss_drift_mib": round((rss["last"] - rss["first"]) / 2**20, 1),
        "rss_drift_share": round(rss_drift, 4),
        "rss_second_half_drift_mib": round((rss["last"] - rss["middle"]) / 2**20, 1),
        "rss_second_half_drift_share": round(second_half, 4),
        "drift": figures,
        "idle_gauges": gauges,
        "samples": [as_dict(s) for s in samples],
        "passed": not summary["violations"],
    }
