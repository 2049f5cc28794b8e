"""Batches and their lines on SQLite and PostgreSQL: the lifecycle's compare-and-set, and lease claims
from two stores at once (two replicas): no line leased twice, an expired lease taken over, each line
answered once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from server.store import Batch, BatchLine, DuplicateId, LineResult, UnknownCursor, owner_hash
from server.store import batches as batch_queries
from tests.server.store.conftest import run

ALICE, BOB = owner_hash("key-alice"), owner_hash("key-bob")
LEASE_S = 60.0


def new_batch(store, batch_id: str, owner: str = ALICE, status: str = "in_progress") -> Batch:
    return Batch(id=batch_id, owner=owner, created_at=store.clock(), endpoint="/v1/chat/completions",
                 input_file_id="file-in", completion_window="24h", status=status, metadata={"job": batch_id})


def lines(count: int, prefix: str = "req") -> list[BatchLine]:
    return [BatchLine(n, f"{prefix}-{n}", {"model": "tiny", "messages": [{"role": "user", "content": str(n)}]})
            for n in range(1, count + 1)]


def create(store, batch_id: str, count: int, **kwargs) -> Batch:
    return run(store.create_batch(new_batch(store, batch_id, **kwargs), lines(count)))


def test_a_batch_reads_back_only_for_its_owner_and_lists_newest_first(store, clock):
    for n in range(3):
        create(store, f"batch_{n}", 2)
        clock.advance(1)
    create(store, "batch_bob", 1, owner=BOB)
    assert run(store.get_batch("batch_1", ALICE)) == replace(new_batch(store, "batch_1"), created_at=clock() - 2)
    assert run(store.get_batch("batch_1", BOB)) is None
    page = run(store.list_batches(ALICE, limit=2))
    assert [b.id for b in page.data] == ["batch_2", "batch_1"] and page.has_more
    rest = run(store.list_batches(ALICE, after="batch_1", limit=2))
    assert [b.id for b in rest.data] == ["batch_0"] and not rest.has_more
    with pytest.raises(UnknownCursor):
        run(store.list_batches(ALICE, after="batch_bob"))  # another owner's id is no cursor
    with pytest.raises(DuplicateId, match="custom_id 'x'"):
        run(store.create_batch(new_batch(store, "batch_dup"), [BatchLine(1, "x", {}), BatchLine(2, "x", {})]))
    with pytest.raises(DuplicateId):
        create(store, "batch_0", 1)
    assert run(store.get_batch("batch_dup", ALICE)) is None


def test_status_moves_only_from_what_the_caller_expects(store, clock):
    create(store, "batch_1", 1, status="validating")
    moved = run(store.set_batch_status("batch_1", "in_progress", expected=["validating"]))
    assert moved.status == "in_progress" and moved.times == {"in_progress_at": clock()}
    assert run(store.set_batch_status("batch_1", "in_progress", expected=["validating"])) is None  # lost the race
    clock.advance(5)
    done = run(store.set_batch_status("batch_1", "completed", expected=["in_progress", "finalizing"],
                                      output_file_id="file-out", errors=[{"line": 3, "message": "bad"}]))
    assert done.status == "completed" and done.output_file_id == "file-out"
    assert done.errors == [{"line": 3, "message": "bad"}]
    assert done.times == {"in_progress_at": clock() - 5, "completed_at": clock()}
    assert run(store.get_batch("batch_1", ALICE)) == done
    assert run(store.set_batch_status("batch_missing", "failed", expected=["validating"])) is None
    with pytest.raises(ValueError, match="owner"):
        run(store.set_batch_status("batch_1", "failed", expected=["completed"], owner=BOB))
    assert [b.id for b in run(store.batches_in(["completed"]))] == ["batch_1"]
    create(store, "batch_2", 1)
    create(store, "batch_bob", 1, owner=BOB)
    assert run(store.count_batches(ALICE, ["in_progress", "validating"])) == 1
    assert run(store.count_batches(ALICE, ["in_progress", "completed"])) == 2


def test_a_line_is_leased_to_one_worker_and_answered_once(store, clock):
    create(store, "batch_1", 5)
    create(store, "batch_waiting", 3, status="validating")  # not in progress: nothing of it is claimed
    first = run(store.claim_lines("replica-a", limit=3, lease_seconds=LEASE_S))
    assert [(c.batch_id, c.line_no, c.custom_id, c.attempts) for c in first] == [
        ("batch_1", n, f"req-{n}", 1) for n in (1, 2, 3)]
    assert first[0].body == lines(1)[0].body and first[0].lease_expires == clock() + LEASE_S
    second = run(store.claim_lines("replica-b", limit=10, lease_seconds=LEASE_S))
    assert [c.line_no for c in second] == [4, 5]
    assert run(store.claim_lines("replica-b", limit=10, lease_seconds=LEASE_S)) == []
    assert run(store.count_lines("batch_1")) == {"pending": 0, "running": 5, "succeeded": 0, "failed": 0,
                                                 "cancelled": 0}
    assert run(store.complete_line("batch_1", 1, "replica-a", status="succeeded", result={"id": "1"}))
    assert not run(store.complete_line("batch_1", 1, "replica-a", status="succeeded", result={"id": "again"}))
    assert not run(store.complete_line("batch_1", 4, "replica-a", status="succeeded", result={}))  # b's line
    assert run(store.complete_line("batch_1", 4, "replica-b", status="failed", result={"error": "400"}))
    with pytest.raises(ValueError, match="status='running'"):
        run(store.complete_line("batch_1", 5, "replica-b", status="running", result={}))
    assert run(store.line_results("batch_1", "succeeded")) == [LineResult(1, "req-1", "succeeded", {"id": "1"})]
    assert run(store.line_results("batch_1", "failed")) == [LineResult(4, "req-4", "failed", {"error": "400"})]


def test_an_expired_lease_is_taken_over_and_the_late_answer_dropped(open_store, clock):
    replica_a, replica_b = open_store(), open_store()  # two stores on one database: two replicas
    create(replica_a, "batch_1", 3)
    assert len(run(replica_a.claim_lines("replica-a", limit=3, lease_seconds=LEASE_S))) == 3
    clock.advance(LEASE_S / 2)
    assert run(replica_a.extend_leases("replica-a", LEASE_S)) == 3  # line 1..3 now expire at +1.5 leases
    assert run(replica_a.complete_line("batch_1", 3, "replica-a", status="succeeded", result={"n": 3}))
    clock.advance(LEASE_S)
    assert run(replica_b.claim_lines("replica-b", limit=3, lease_seconds=LEASE_S)) == []  # not yet expired
    clock.advance(LEASE_S)  # replica-a died: its leases run out
    taken = run(replica_b.claim_lines("replica-b", limit=3, lease_seconds=LEASE_S))
    assert [(c.line_no, c.attempts) for c in taken] == [(1, 2), (2, 2)]
    assert not run(replica_a.complete_line("batch_1", 1, "replica-a", status="succeeded", result={"late": 1}))
    assert run(replica_b.complete_line("batch_1", 1, "replica-b", status="succeeded", result={"n": 1}))
    assert run(replica_b.complete_line("batch_1", 2, "replica-b", status="succeeded", result={"n": 2}))
    results = run(replica_a.line_results("batch_1", "succeeded"))
    assert [(r.custom_id, r.result) for r in results] == [("req-1", {"n": 1}), ("req-2", {"n": 2}), ("req-3", {"n": 3})]


def test_released_expired_and_cancelled_lines(store, clock):
    create(store, "batch_1", 4)
    create(store, "batch_2", 2)
    run(store.claim_lines("replica-a", limit=1, lease_seconds=LEASE_S, batch_id="batch_2"))
    run(store.claim_lines("replica-b", limit=2, lease_seconds=LEASE_S, batch_id="batch_1"))
    assert run(store.release_lines("replica-a")) == 1  # a draining replica gives its line back
    assert run(store.count_lines("batch_2"))["pending"] == 2
    assert run(store.expire_leases()) == 0
    clock.advance(LEASE_S + 1)
    assert run(store.expire_leases()) == 2
    assert run(store.count_lines("batch_1"))["pending"] == 4
    run(store.claim_lines("replica-c", limit=1, lease_seconds=LEASE_S, batch_id="batch_1"))
    assert run(store.cancel_lines("batch_1")) == 3  # the running line finishes
    assert run(store.count_lines("batch_1")) == {"pending": 0, "running": 1, "succeeded": 0, "failed": 0,
                                                 "cancelled": 3}
    [again] = run(store.claim_lines("replica-d", limit=5, lease_seconds=LEASE_S, batch_id="batch_2"))[:1]
    assert again.attempts == 2  # line 1 of batch_2 was claimed once before its release
    with pytest.raises(ValueError, match="limit=0"):
        run(store.claim_lines("replica-d", limit=0, lease_seconds=LEASE_S))


def test_two_replicas_claiming_at_once_never_share_a_line(open_store):
    stores = [open_store(), open_store()]
    create(stores[0], "batch_1", 200)
    claimed: dict[int, str] = {}
    lock = threading.Lock()
    duplicates = []

    def work(worker: str, store) -> None:
        while batch := run(store.claim_lines(worker, limit=7, lease_seconds=LEASE_S)):
            with lock:
                for line in batch:
                    if line.line_no in claimed:
                        duplicates.append((line.line_no, claimed[line.line_no], worker))
                    claimed[line.line_no] = worker
            for line in batch:
                assert run(store.complete_line("batch_1", line.line_no, worker, status="succeeded", result={}))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(work, f"worker-{n}", stores[n % 2]) for n in range(4)]
        for future in futures:
            future.result()
    assert duplicates == []
    assert sorted(claimed) == list(range(1, 201))
    assert len(set(claimed.values())) > 1  # the work really was shared
    assert run(stores[1].count_lines("batch_1"))["succeeded"] == 200


def test_a_claim_skips_the_lines_another_open_claim_holds(store):
    """PostgreSQL: while one replica's claim transaction is still open, another's claim takes the next
    lines at once (SKIP LOCKED) instead of waiting; SQLite: the second claim waits for the one writer."""
    create(store, "batch_1", 6)
    with ThreadPoolExecutor(1) as pool:
        with store.db.write() as conn:
            held = batch_queries.claim(conn, "replica-a", 3, LEASE_S, store.clock(), None)
            other = pool.submit(run, store.claim_lines("replica-b", limit=3, lease_seconds=LEASE_S))
            if store.dialect == "postgresql":  # answered while the first claim is still open
                assert [c.line_no for c in other.result(timeout=60)] == [4, 5, 6]
        assert [c.line_no for c in held] == [1, 2, 3]
        assert [c.line_no for c in other.result(timeout=60)] == [4, 5, 6]
