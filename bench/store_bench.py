"""The state store's costs on this machine, SQLite file against a local PostgreSQL server.

For each database: storing a Responses turn with a 256 KiB image (p50 / p95 ms, the same image each
turn, so after the first only a reference is added), reading back a 10-turn conversation, a page of
input items, and batch lines claimed and completed by 4 workers on 2 stores (two replicas) in
claims of 8 (lines/s). PostgreSQL is a throwaway server on 127.0.0.1 started like the tests'
(testkit/postgres.py, Debian's package: `make postgresql`), with fsync on, as it would run.

    .venv/bin/python -m bench.store_bench [--turns 200] [--lines 2000] [--only sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.config import StoreConfig
from server.store import Batch, BatchLine, MediaBlob, StateStore, StoredResponse, owner_hash
from testkit.postgres import PostgresServer

OWNER = owner_hash("bench-key")
IMAGE = MediaBlob(os.urandom(256 * 1024), "image/png")


def timed_ms(calls: int, make: Callable[[int], Coroutine[Any, Any, Any]]) -> list[float]:
    async def loop() -> list[float]:
        spent = []
        for n in range(calls):
            start = time.perf_counter()
            await make(n)
            spent.append((time.perf_counter() - start) * 1000)
        return spent
    return asyncio.run(loop())


def turn(n: int) -> StoredResponse:
    return StoredResponse(
        id=f"resp_{n}", owner=OWNER, created_at=time.time(), model="bench", status="completed",
        request={"instructions": "describe", "tools": []},
        input_items=[{"id": f"msg_{n}", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "what is in the picture? " * 8},
                                  {"type": "input_image", "image_url": f"llava-media:{IMAGE.hash}"}]}],
        output={"id": f"resp_{n}", "output": [{"type": "message", "content": [{"text": "a cat " * 40}]}]},
        previous_response_id=f"resp_{n - 1}" if n % 10 else None)


def claim_rate(stores: list[StateStore], num_lines: int) -> float:
    asyncio.run(stores[0].create_batch(
        Batch(id="batch_bench", owner=OWNER, created_at=time.time(), endpoint="/v1/chat/completions",
              input_file_id="file-in", completion_window="24h", status="in_progress"),
        [BatchLine(n, f"req-{n}", {"messages": [{"role": "user", "content": "caption it"}]})
         for n in range(1, num_lines + 1)]))
    done, lock = [0], threading.Lock()

    def work(worker: str, store: StateStore) -> None:
        async def loop() -> None:
            while lines := await store.claim_lines(worker, limit=8, lease_seconds=60):
                for line in lines:
                    await store.complete_line(line.batch_id, line.line_no, worker, status="succeeded",
                                              result={"custom_id": line.custom_id, "response": {"status_code": 200}})
                with lock:
                    done[0] += len(lines)
        asyncio.run(loop())

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(work, f"worker-{n}", stores[n % 2]) for n in range(4)]:
            future.result()
    assert done[0] == num_lines
    return num_lines / (time.perf_counter() - start)


def bench(name: str, url: str, turns: int, num_lines: int) -> None:
    config = StoreConfig(state_db=url)
    stores = [asyncio.run(StateStore.open(config)) for _ in range(2)]
    store = stores[0]
    try:
        put = timed_ms(turns, lambda n: store.put_response(turn(n), [IMAGE]))
        chain = timed_ms(50, lambda n: store.get_conversation(f"resp_{(n % (turns // 10)) * 10 + 9}", OWNER))
        items = timed_ms(50, lambda n: store.list_input_items(f"resp_{n}", OWNER, limit=20))
        media = timed_ms(50, lambda n: store.get_media([IMAGE.hash], OWNER))
        rate = claim_rate(stores, num_lines)
    finally:
        for s in stores:
            asyncio.run(s.close())
    show = lambda spent: f"{statistics.median(spent):7.2f} / {statistics.quantiles(spent, n=20)[-1]:7.2f}"  # noqa: E731
    print(f"{name:<11} put turn+image {show(put)} ms   10-turn conversation {show(chain)} ms   "
          f"input items {show(items)} ms   image {show(media)} ms   claim+complete {rate:7.0f} lines/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"p50 / p95 of {args.turns} stored turns (256 KiB image each) and 50 reads; {args.lines} batch lines, "
          f"4 workers on 2 stores; {os.cpu_count()} CPUs")
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as folder:
            bench("sqlite", f"sqlite:///{folder}/state.db", args.turns, args.lines)
    if args.only != "sqlite":
        server = PostgresServer(fsync=True).start()
        try:
            bench("postgresql", server.new_database(), args.turns, args.lines)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
