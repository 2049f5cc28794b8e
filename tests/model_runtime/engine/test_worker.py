"""The worker thread and its asyncio bridge: streams, n choices, client gone, drain, health, death."""

from __future__ import annotations

import asyncio
import time

import pytest

from model_runtime import EngineDeadError, EngineDrainingError, EngineWorker
from model_runtime.engine.worker import Abort, AbortAll, Submit, Wake
from testkit.faults import FaultInjection


async def consume(worker: EngineWorker, request) -> list:
    return [o async for o in worker.generate(request)]


def with_worker(engine, body):
    async def main():
        worker = EngineWorker(engine)
        worker.start()
        try:
            return await body(worker)
        finally:
            worker.stop()

    return asyncio.run(main())


def test_streams_every_choice_and_ends_after_the_last(new_engine, make_request):
    async def body(worker):
        a, b = await asyncio.gather(
            consume(worker, make_request("a", max_tokens=5, n=2, temperature=1.0, seed=1)),
            consume(worker, make_request("b", max_tokens=3)),
        )
        return a, b, worker.health()

    a, b, health = with_worker(new_engine(), body)
    assert sorted(o.index for o in a if o.finished) == [0, 1]
    assert sum(len(o.new_token_ids) for o in a) == 10 and sum(len(o.new_token_ids) for o in b) == 3
    assert health.is_alive and not health.is_dead and health.num_unfinished == 0
    assert health.last_step_time > 0 and time.time() - health.last_heartbeat < 5


def test_a_consumer_that_leaves_aborts_its_request(new_engine, make_request):
    engine = new_engine()

    async def body(worker):
        async for out in worker.generate(make_request("gone", max_tokens=1000)):
            assert not out.finished
            break
        for _ in range(200):
            if not engine.has_unfinished():
                break
            await asyncio.sleep(0.01)
        return worker.stats()

    stats = with_worker(engine, body)
    assert not engine.has_unfinished() and stats.num_generation_tokens < 1000


def test_drain_finishes_short_requests_and_aborts_the_rest(new_engine, make_request):
    async def body(worker):
        short = asyncio.create_task(consume(worker, make_request("short", max_tokens=2)))
        long = asyncio.create_task(consume(worker, make_request("long", max_tokens=100000)))
        await asyncio.sleep(0.2)
        num_aborted = await worker.drain(timeout_s=0.3)
        with pytest.raises(EngineDrainingError):
            await consume(worker, make_request("refused"))
        return num_aborted, await short, await long, worker.health()

    num_aborted, short, long, health = with_worker(new_engine(), body)
    assert num_aborted == 1
    assert short[-1].finish_reason == "length" and long[-1].finish_reason == "abort"
    assert not health.is_admitting and health.num_unfinished == 0 and health.is_alive


def test_a_fatal_error_kills_the_worker_and_fails_its_streams(new_engine, make_request):
    engine = new_engine(faults=FaultInjection(fatal_at_step=2))

    async def body(worker):
        outputs = await consume(worker, make_request("victim", max_tokens=50))
        for _ in range(200):
            if not worker.is_alive:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(EngineDeadError):
            await consume(worker, make_request("after"))
        return outputs, worker.health()

    outputs, health = with_worker(engine, body)
    assert outputs[-1].finish_reason == "error"
    assert health.is_dead and not health.is_alive and "injected" in health.dead_reason


def test_the_inbox_holds_typed_messages(new_engine):
    worker = EngineWorker(new_engine())
    worker.abort("r")
    worker.stop()  # never started: it queues the wake-up and returns
    assert list(worker._inbox.queue) == [Abort("r"), Wake()]


def test_messages_are_handled_by_type(new_engine, make_request):
    engine = new_engine()
    worker = EngineWorker(engine)  # not started: this thread stands in for the engine thread
    worker._handle(Submit(make_request("gone")))  # no open stream: its caller left before the thread saw it
    assert not engine.has_unfinished()
    for rid in ("a", "b", "c"):
        engine.add_request(make_request(rid))
    worker._handle(Abort("a"))
    worker._handle(Wake())
    assert set(engine.requests) == {"b", "c"}
    worker._handle(AbortAll())
    assert not engine.has_unfinished()
    with pytest.raises(TypeError, match="not a worker message"):
        worker._handle(("abort", "b"))  # the inbox's old (kind, payload) tuples are refused
