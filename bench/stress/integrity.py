"""Concurrency integrity: many clients at once, mixed media, some cancelled; no answer lost or mixed up.

A pool of distinct greedy requests (text, image, video with its audio track, audio; float32,
fixed length) is first answered one at a time: the solo answers. Then `rounds` rounds of
`clients` concurrent requests drawn from the pool, half streamed, each with its own
`x-request-id`, and `CANCEL_SHARE` of them closed by the client at a random moment. Every request
that was not cancelled must come back 200 (0 lost), carry its own id (0 mixed), end its stream
with `[DONE]`, and give exactly its solo answer. The idle gauges must read 0 afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx

from bench.stress.fuzz import Tally
from bench.stress.media import body as media_body
from bench.stress.media import seed_file
from bench.stress.server import MODEL_NAME, Server, start_server, stop_server
from testkit.media import image_bytes

CANCEL_SHARE = 0.2
MAX_TOKENS = 8


def request_pool() -> list[dict]:
    texts = [
        {"model": MODEL_NAME, "messages": [{"role": "user", "content": f"Story number {k}: once upon"}]}
        for k in range(8)
    ]
    media = [media_body("PNG", image_bytes(64 + 16 * k, 48, seed=k)) for k in range(3)]
    media += [media_body(fmt, seed_file(fmt)) for fmt in ("JPEG", "MP4", "WEBM", "WAV", "MP3")]
    pool = texts + media
    for b in pool:
        b.update(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    return pool


async def ask(
    client: httpx.AsyncClient, body: dict, request_id: str, stream: bool
) -> tuple[int, str, str, bool]:
    """(status, content, completion id, ended cleanly) of one request."""
    payload = {**body, "stream": stream}
    headers = {"x-request-id": request_id}
    if not stream:
        r = await client.post("/v1/chat/completions", json=payload, headers=headers)
        if r.status_code != 200:
            return r.status_code, r.text[:200], "", True
        data = r.json()
        return 200, data["choices"][0]["message"]["content"], data["id"], True
    pieces, ids, events = [], set(), []
    async with client.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()[:200], "", True
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if events[-1] != "[DONE]":
                chunk = json.loads(events[-1])
                ids.add(chunk.get("id", ""))
                pieces += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
    return 200, "".join(pieces), ",".join(sorted(ids)), bool(events) and events[-1] == "[DONE]"


async def rounds(
    server: Server, pool: list[dict], solo: list[str], clients: int, num_rounds: int, seed: int, tally: Tally
) -> dict:
    rng = random.Random(seed)
    counts = {
        "cancel_planned": 0,
        "completed": 0,
        "cancelled": 0,
        "lost": 0,
        "mixed": 0,
        "different": 0,
        "torn": 0,
    }
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300, limits=limits) as client:

        async def one(r: int, c: int) -> None:
            k = rng.randrange(len(pool))
            request_id = f"r{r}-c{c}"
            work = ask(client, pool[k], request_id, stream=rng.random() < 0.5)
            cancel_after = rng.uniform(0.05, 1.0) if rng.random() < CANCEL_SHARE else None
            counts["cancel_planned"] += cancel_after is not None
            try:
                status, content, completion_id, clean = await asyncio.wait_for(work, cancel_after)
            except TimeoutError:
                counts["cancelled"] += 1
                return
            except httpx.HTTPError as e:
                status, content, completion_id, clean = 0, repr(e), "", False
            if status != 200:
                counts["lost"] += 1
                tally.violate("lost", request=request_id, status=status, response=content)
                return
            counts["completed"] += 1
            if completion_id != f"chatcmpl-{request_id}":
                counts["mixed"] += 1
                tally.violate("mixed", request=request_id, got=completion_id)
            if not clean:
                counts["torn"] += 1
                tally.violate("torn stream", request=request_id)
            if content != solo[k]:
                counts["different"] += 1
                tally.violate(
                    "answer differs from solo", request=request_id, item=k, got=content, solo=solo[k]
                )

        for r in range(num_rounds):
            await asyncio.gather(*(one(r, c) for c in range(clients)))
    return counts


def run(model: str, logs: Path, clients: int, num_rounds: int, seed: int = 0) -> dict:
    server = start_server(model, logs, "--media-workers", "2", name="integrity")
    try:
        return check(server, clients, num_rounds, seed)
    finally:
        stop_server(server)


def check(server: Server, clients: int, num_rounds: int, seed: int = 0) -> dict:
    tally = Tally()
    started = time.monotonic()
    pool = request_pool()
    solo = []
    for k, b in enumerate(pool):
        status, content, _, _ = asyncio.run(_solo(server, b, f"solo-{seed}-{k}"))
        if status != 200:
            raise RuntimeError(f"solo request {k} failed: {status} {content}")
        solo.append(content)
    counts = asyncio.run(rounds(server, pool, solo, clients, num_rounds, seed, tally))
    gauges = server.idle_gauges()
    if any(gauges.values()):
        tally.violate("leak", gauges=gauges)
    return {
        "clients": clients,
        "rounds": num_rounds,
        "requests": clients * num_rounds,
        "pool": len(pool),
        **counts,
        "idle_gauges": gauges,
        "violations": dict(tally.violations),
        "examples": tally.examples,
        "seconds": round(time.monotonic() - started, 1),
        "passed": not tally.violations,
    }


async def _solo(server: Server, body: dict, request_id: str) -> tuple[int, str, str, bool]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
        return await ask(client, body, request_id, stream=False)
