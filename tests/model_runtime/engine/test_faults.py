"""Fault isolation with faults injected inside the real model (tests/faults.py, the runner's forward hook)."""

from __future__ import annotations

import time

import pytest

from model_runtime import EngineDeadError
from testkit.faults import FaultInjection
from tests.model_runtime.engine.conftest import images, run


def eight_requests(make_request):
    return [
        make_request(f"r{i}", "word " * (1 + i) + "end", images((30 + 10 * i, 40), seed=i) if i % 2 else (),
                     max_tokens=3 + i)
        for i in range(8)
    ]


def solo_ids(new_engine, requests) -> dict[str, list[int]]:
    engine = new_engine()
    return {r.request_id: run(engine, [r])[r.request_id].ids for r in requests}


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_one_poisoned_request_fails_alone(new_engine, make_request, phase):
    engine = new_engine(faults=FaultInjection(poison_request_ids=frozenset({"r5"}),
                                                       poison_phases=frozenset({phase})))
    results = run(engine, eight_requests(make_request))
    reasons = {rid: r.final.finish_reason for rid, r in results.items()}
    assert [rid for rid, reason in reasons.items() if reason == "error"] == ["r5"]
    assert results["r5"].final.error and results["r5"].final.metrics is not None
    expected = solo_ids(new_engine, eight_requests(make_request))
    for rid, r in results.items():
        if rid != "r5":
            assert r.ids == expected[rid], rid
            assert reasons[rid] == "length"
    stats = engine.stats()
    assert stats.num_errors == 1 and not stats.is_dead and stats.kv_cache_bytes == 0


def test_out_of_memory_halves_the_batch(new_engine, make_request):
    engine = new_engine(max_num_seqs=8, faults=FaultInjection(oom_over_rows=2))
    results = run(engine, eight_requests(make_request))
    expected = solo_ids(new_engine, eight_requests(make_request))
    assert {rid: r.ids for rid, r in results.items()} == expected
    assert all(r.final.finish_reason == "length" for r in results.values())
    stats = engine.stats()
    assert stats.num_out_of_memory >= 2 and stats.num_errors == 0
    assert engine.scheduler.max_num_seqs <= 4 and engine.runner.max_rows <= 2


def test_a_fatal_device_error_marks_the_engine_dead(new_engine, make_request):
    engine = new_engine(faults=FaultInjection(fatal_at_step=3))
    results = run(engine, eight_requests(make_request)[:3] + [make_request("late", max_tokens=2)],
                  arrival_steps=[0, 0, 0, 1])
    assert {r.final.finish_reason for r in results.values()} == {"error"}
    stats = engine.stats()
    assert stats.is_dead and "injected fatal" in stats.dead_reason
    assert stats.batch_size == 0 and stats.kv_cache_bytes == 0
    assert engine.step() == []
    with pytest.raises(EngineDeadError):
        engine.add_request(make_request("after"))


def test_a_stalled_step_sleeps_once_and_changes_no_output(new_engine, make_request):
    expected = {rid: r.ids for rid, r in run(new_engine(), [make_request("a", max_tokens=4)]).items()}
    engine = new_engine(faults=FaultInjection(stall_at_step=2, stall_seconds=0.4))
    engine.add_request(make_request("a", max_tokens=4))
    durations = []
    while engine.has_unfinished():
        start = time.monotonic()
        engine.step()
        durations.append(time.monotonic() - start)
    assert durations[1] >= 0.4 and max(durations[:1] + durations[2:]) < 0.4
    assert {rid: r.ids for rid, r in run(engine, [make_request("b", max_tokens=4)]).items()} == {"b": expected["a"]}


def test_error_outputs_say_whether_the_engine_stopped(new_engine, make_request):
    poisoned = new_engine(faults=FaultInjection(poison_request_ids=frozenset({"bad"})))
    results = run(poisoned, [make_request("bad", max_tokens=3), make_request("good", max_tokens=3)])
    assert results["bad"].final.finish_reason == "error" and not results["bad"].final.is_engine_dead
    assert results["good"].final.finish_reason == "length" and not results["good"].final.is_engine_dead
    dead = run(new_engine(faults=FaultInjection(fatal_at_step=2)), [make_request("victim", max_tokens=5)])
    assert dead["victim"].final.finish_reason == "error" and dead["victim"].final.is_engine_dead
