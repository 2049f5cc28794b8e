"""The scheduler: FCFS admission within rows and the prefill budget; decoding is never starved."""

from __future__ import annotations

from model_runtime import PromptInput, Request, SamplingParams
from model_runtime.engine.detokenizer import IncrementalDetokenizer
from model_runtime.engine.request import Sequence
from model_runtime.engine.scheduler import Scheduler


def request(rid: str, num_tokens: int, n: int = 1, deadline: float | None = None) -> Request:
    prompt = PromptInput(token_ids=list(range(num_tokens)), num_text_tokens=num_tokens, num_media_tokens=0)
    return Request(rid, prompt, [], SamplingParams(max_tokens=4, n=n), deadline=deadline)


def start(scheduler: Scheduler, requests: list[Request]) -> None:
    """What the engine does after a successful prefill."""
    for r in requests:
        scheduler.running += [Sequence(r, i, IncrementalDetokenizer(None), None) for i in range(r.params.n)]


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


def test_admission_is_fcfs_within_rows_and_budget():
    s = Scheduler(max_num_seqs=4, max_prefill_tokens=100)
    for r in [request("a", 30), request("b", 40), request("c", 10), request("d", 5)]:
        s.add(r)
    plan = s.schedule(now=0)
    # padded size: 2 rows x 40 = 80 fits; 3 x 40 = 120 does not, and "d" may not jump the queue
    assert ids(plan.prefill) == ["a", "b"] and not plan.is_decode
    start(s, plan.prefill)
    assert s.schedule(now=0).is_decode  # guard: a decode step between two prefills
    plan = s.schedule(now=0)
    assert ids(plan.prefill) == ["c", "d"]


def test_a_long_head_is_admitted_alone_and_never_starves_decoding():
    s = Scheduler(max_num_seqs=8, max_prefill_tokens=64)
    s.add(request("short", 8))
    start(s, s.schedule(now=0).prefill)
    for i in range(3):
        s.add(request(f"video{i}", 5000))
    kinds = []
    for _ in range(6):
        plan = s.schedule(now=0)
        kinds.append("P" if plan.prefill else "D")
        if plan.prefill:
            assert len(plan.prefill) == 1  # over the budget: alone
            start(s, plan.prefill)
    assert kinds == ["D", "P", "D", "P", "D", "P"]


def test_rows_count_choices_and_the_head_waits_for_room():
    s = Scheduler(max_num_seqs=4, max_prefill_tokens=1000)
    s.add(request("two", 5, n=2))
    start(s, s.schedule(now=0).prefill)
    s.add(request("three", 5, n=3))
    s.add(request("one", 5))
    s.schedule(now=0)  # decode (guard)
    plan = s.schedule(now=0)
    assert plan.prefill == [] and plan.is_decode  # "three" needs 3 rows, 2 are free; "one" may not pass it
    s.running = s.running[:1]
    assert ids(s.schedule(now=0).prefill) == ["three"]


def test_expired_requests_come_out_first():
    s = Scheduler(max_num_seqs=4, max_prefill_tokens=1000)
    s.add(request("run", 5, deadline=10.0))
    start(s, s.schedule(now=0).prefill)
    s.add(request("wait", 5, deadline=5.0))
    plan = s.schedule(now=11.0)
    assert ids(plan.expired) == ["wait", "run"] and not plan.prefill and not plan.is_decode
