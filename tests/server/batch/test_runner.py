"""The batch runner's lifecycle steps on SQLite and PostgreSQL, with the real store and no engine (no line
runs here): validating -> in_progress, a finalization that a killed server left half done finished without a
second file, a cancelled batch's pending lines dropped, a batch past its window expired."""

from __future__ import annotations

import json

from server.batch.runner import BatchRunner, output_file_id
from server.config import ServerConfig
from server.state import ServerState
from server.store import Batch, BatchLine, owner_hash
from tests.server.store.conftest import run

OWNER = owner_hash("k1")
LEASE_S = 30.0


def runner(store) -> BatchRunner:
    return BatchRunner(ServerState.build(ServerConfig(model="tiny", served_model_name="tiny")), store)


def queue(store, batch_id: str, count: int, status: str = "in_progress", expires_at: float | None = None) -> Batch:
    batch = Batch(id=batch_id, owner=OWNER, created_at=store.clock(), endpoint="/v1/chat/completions",
                  input_file_id="file-in", completion_window="24h", status=status, expires_at=expires_at)
    lines = [BatchLine(n, f"c-{n}", {"model": "tiny"}) for n in range(1, count + 1)]
    return run(store.create_batch(batch, lines))


def answer(store, worker: str, batch_id: str, line_no: int, status: str = "succeeded") -> None:
    result = {"custom_id": f"c-{line_no}", "response": {"status_code": 200 if status == "succeeded" else 400}}
    assert run(store.complete_line(batch_id, line_no, worker, status=status, result=result))


def custom_ids(store, file_id: str | None) -> list[str]:
    data = run(store.get_file_content(file_id, OWNER)) if file_id else b""
    return [json.loads(line)["custom_id"] for line in (data or b"").decode().splitlines()]


def current(store, batch_id: str) -> Batch:
    batch = run(store.get_batch(batch_id, OWNER))
    assert batch is not None
    return batch


def test_a_validating_batch_starts(store):
    queue(store, "batch_v", 1, status="validating")
    run(runner(store).finish_if_done(current(store, "batch_v")))
    assert current(store, "batch_v").status == "in_progress"


def test_a_finalization_left_half_done_is_finished_with_one_file_each(store):
    worker = runner(store)
    queue(store, "batch_f", 3)
    for line in run(store.claim_lines("w", limit=3, lease_seconds=LEASE_S)):
        answer(store, "w", "batch_f", line.line_no, "failed" if line.line_no == 2 else "succeeded")
    # a server died after moving the batch to finalizing and writing its output file
    run(store.set_batch_status("batch_f", "finalizing", expected=("in_progress",)))
    run(worker._write_file(current(store, "batch_f"), "succeeded", "output"))
    run(worker.finish_if_done(current(store, "batch_f")))
    done = current(store, "batch_f")
    assert done.status == "completed" and done.output_file_id == output_file_id("batch_f", "output")
    assert custom_ids(store, done.output_file_id) == ["c-1", "c-3"] and custom_ids(store, done.error_file_id) == ["c-2"]
    assert len(run(store.list_files(OWNER)).data) == 2
    run(worker.finish_if_done(done))  # a second runner looking at it changes nothing
    assert current(store, "batch_f") == done


def test_an_in_progress_batch_waits_for_its_lines_then_completes(store):
    worker = runner(store)
    queue(store, "batch_p", 2)
    (first,) = run(store.claim_lines("w", limit=1, lease_seconds=LEASE_S))
    answer(store, "w", "batch_p", first.line_no)
    run(worker.finish_if_done(current(store, "batch_p")))
    assert current(store, "batch_p").status == "in_progress"  # one line still pending
    (second,) = run(store.claim_lines("w", limit=1, lease_seconds=LEASE_S))
    answer(store, "w", "batch_p", second.line_no)
    run(worker.finish_if_done(current(store, "batch_p")))
    assert current(store, "batch_p").status == "completed"


def test_a_cancelled_batch_drops_its_pending_lines_and_keeps_what_finished(store):
    worker = runner(store)
    queue(store, "batch_c", 3)
    (running,) = run(store.claim_lines("w", limit=1, lease_seconds=LEASE_S))
    run(store.set_batch_status("batch_c", "cancelling", expected=("in_progress",)))
    run(store.cancel_lines("batch_c"))
    run(worker.finish_if_done(current(store, "batch_c")))
    assert current(store, "batch_c").status == "cancelling"  # a line still runs
    answer(store, "w", "batch_c", running.line_no)
    run(worker.finish_if_done(current(store, "batch_c")))
    done = current(store, "batch_c")
    assert done.status == "cancelled" and custom_ids(store, done.output_file_id) == ["c-1"]
    assert run(store.count_lines("batch_c"))["cancelled"] == 2


def test_a_batch_past_its_window_expires(store, clock):
    worker = runner(store)
    queue(store, "batch_e", 2, expires_at=clock() + 10)
    (line,) = run(store.claim_lines("w", limit=1, lease_seconds=LEASE_S))
    answer(store, "w", "batch_e", line.line_no)
    clock.advance(11)
    run(worker.finish_if_done(current(store, "batch_e")))
    done = current(store, "batch_e")
    assert done.status == "expired" and custom_ids(store, done.output_file_id) == ["c-1"]
    assert run(store.count_lines("batch_e"))["cancelled"] == 1
