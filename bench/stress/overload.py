"""Overload: closed-loop clients at the server's capacity, then at twice it.

The server holds `--max-num-seqs` running requests and `--max-queued-requests` admitted ones, so
its capacity is their sum: that many closed-loop clients keep it full without a refusal. Twice
that many must see refusals, each a 429 `server_overloaded` with `Retry-After`, answered fast
(p99 <= 50 ms from the client's send), while the accepted requests' latency stays within twice
(+1 s) what it was at capacity. Half the requests carry an image: the decode counter of /metrics
must grow by exactly the accepted image requests (a refused request decodes nothing). A refused
client waits `REFUSED_PAUSE_S` before its next request (closed loop, not a retry storm).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from bench.stress.bounds import bound, broken
from bench.stress.media import percentile
from bench.stress.server import MODEL_NAME, Server, error_shape_problem, start_server, stop_server
from testkit.media import data_url, image_bytes

MAX_NUM_SEQS = 4
MAX_QUEUED = 4
REFUSED_PAUSE_S = 0.1
REFUSAL_P99_LIMIT_S = 0.050
IMAGES = [data_url("image/png", image_bytes(64, 48, seed=k)) for k in range(16)]


def request_body(k: int) -> dict:
    content: list[dict] = [{"type": "text", "text": f"Count to {k % 7}."}]
    if k % 2:
        content.insert(0, {"type": "image_url", "image_url": {"url": IMAGES[k % len(IMAGES)]}})
    return {
        "model": MODEL_NAME,
        "max_tokens": 16,
        "ignore_eos": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }


async def closed_loop(server: Server, num_clients: int, seconds: float) -> dict:
    accepted: list[float] = []
    refused: list[float] = []
    problems: list[str] = []
    counts = {"image_accepted": 0, "requests": 0}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=num_clients, max_keepalive_connections=num_clients)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:

        async def loop(c: int) -> None:
            k = c
            while time.monotonic() < deadline:
                body = request_body(k)
                k += num_clients
                start = time.monotonic()
                response = await client.post("/v1/chat/completions", json=body)
                took = time.monotonic() - start
                counts["requests"] += 1
                if response.status_code == 429:
                    refused.append(took)
                    if not response.headers.get("retry-after") or error_shape_problem(429, response.content):
                        problems.append(f"429 without Retry-After or OpenAI shape: {response.text[:200]}")
                    await asyncio.sleep(REFUSED_PAUSE_S)
                    continue
                if response.status_code != 200:
                    problems.append(f"{response.status_code}: {response.text[:200]}")
                accepted.append(took)
                counts["image_accepted"] += len(body["messages"][0]["content"]) - 1

        await asyncio.gather(*(loop(c) for c in range(num_clients)))
    return {
        "clients": num_clients,
        "seconds": seconds,
        **counts,
        "accepted": len(accepted),
        "refused": len(refused),
        "accepted_per_s": round(len(accepted) / seconds, 2),
        "accepted_p50_s": round(percentile(accepted, 0.5), 3),
        "accepted_p99_s": round(percentile(accepted, 0.99), 3),
        "refused_p50_ms": round(1000 * percentile(refused, 0.5), 1),
        "refused_p99_ms": round(1000 * percentile(refused, 0.99), 1),
        "problems": problems[:10],
        "num_problems": len(problems),
    }


def phase(server: Server, num_clients: int, seconds: float) -> dict:
    before = server.metrics()
    result = asyncio.run(closed_loop(server, num_clients, seconds))
    after = server.metrics()
    result["decodes"] = after.get("llava_media_decode_seconds_count", 0) - before.get(
        "llava_media_decode_seconds_count", 0
    )
    result["fetches"] = after.get("llava_media_fetch_seconds_count", 0) - before.get(
        "llava_media_fetch_seconds_count", 0
    )
    result["rejected_counted"] = after.get("llava_requests_rejected_total", 0) - before.get(
        "llava_requests_rejected_total", 0
    )
    return result


SERVER_FLAGS = (
    "--max-num-seqs",
    str(MAX_NUM_SEQS),
    "--max-queued-requests",
    str(MAX_QUEUED),
    "--media-workers",
    "2",
)


def run(model: str, logs: Path, seconds: float) -> dict:
    server = start_server(model, logs, *SERVER_FLAGS, name="overload")
    try:
        return check(server, seconds)
    finally:
        stop_server(server)


def check(server: Server, seconds: float, capacity: int = MAX_NUM_SEQS + MAX_QUEUED) -> dict:
    """`capacity`: the server's --max-num-seqs + --max-queued-requests."""
    at_capacity = phase(server, capacity, max(2.0, seconds / 3))
    overloaded = phase(server, 2 * capacity, seconds)
    gauges = server.idle_gauges()
    violations = {}
    if overloaded["refused"] == 0:
        violations["no refusals at 2x capacity"] = 1
    for name, p in (("at capacity", at_capacity), ("at 2x", overloaded)):
        if p["num_problems"]:
            violations[f"{name}: non-200/429 answers or bad 429s"] = p["num_problems"]
        if p["decodes"] != p["image_accepted"] or p["fetches"] != p["image_accepted"]:
            violations[
                f"{name}: media work {p['decodes']} decodes for {p['image_accepted']} accepted images"
            ] = 1
    accepted_limit_s = 2 * at_capacity["accepted_p99_s"] + 1.0
    bounds = {
        "refusal_p99_ms": bound(overloaded["refused_p99_ms"], 1000 * REFUSAL_P99_LIMIT_S, "ms"),
        "accepted_p99_s": bound(overloaded["accepted_p99_s"], accepted_limit_s, "s"),
    }
    if any(gauges.values()):
        violations["gauges not back to 0"] = 1
    return {
        "capacity": capacity,
        "at_capacity": at_capacity,
        "at_2x": overloaded,
        "accepted_p99_bound_s": accepted_limit_s,
        "idle_gauges": gauges,
        "violations": violations,
        "bounds": bounds,
        "passed": not violations and not broken(bounds),
    }
