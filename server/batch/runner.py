"""The batch runner: a background task of the server (started by the lifespan) that works every in_progress batch.

It claims lines from the state store with leases (this server is one worker; replicas on one
PostgreSQL are others), runs at most --max-batch-lines-in-flight of them at once through the
pipeline (execute.py: Priority.BATCH, media fetched only when a line runs), records each answer
while it still holds the lease, renews its leases, and finalizes a batch whose lines are all
done: the output and error files, then `completed` (or `cancelled`, `expired`). Everything it
knows lives in the database, so a server killed at any moment loses only its leases; they
lapse and any runner takes those lines again. Stopping (SIGTERM's drain) gives its lines back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid

from server.batch.execute import run_line
from server.batch.lines import jsonl
from server.lifecycle import Phase
from server.state import ServerState
from server.store import Batch, ClaimedLine, DuplicateId, StateStore, StoredFile

log = logging.getLogger("llava_serve")

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a batch not yet finished
POLL_S = 0.25  # between rounds while lines wait (a line that ends starts a round at once)
IDLE_POLL_S = 1.0  # between looks while nothing is claimable
RETRY_PAUSE_S = 1.0  # after the server could not take a line (its queue full)
METRICS_S = 5.0  # between counts of batches and lines for the metrics


def output_file_id(batch_id: str, kind: str) -> str:
    """The output (`output`) or error (`errors`) file's id: one per batch, so a finalization run twice
    (a server killed in the middle, two replicas) writes it once."""
    return f"file-{batch_id.removeprefix('batch_')}-{kind}"


class BatchRunner:
    def __init__(self, state: ServerState, store: StateStore) -> None:
        self.state = state
        self.store = store
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this server's lease owner
        self.running: dict[tuple[str, int], asyncio.Task] = {}
        self._paused_until = 0.0
        self._renewed = time.monotonic()
        self._counted = 0.0
        self._checked = 0.0  # when the active batches were last looked at for finalization
        self._wake = asyncio.Event()  # set when a line ends: claim the next one now, not at the next poll

    async def run_forever(self) -> None:
        try:
            while True:
                is_busy = await self.step()
                with contextlib.suppress(TimeoutError):  # a line that ends frees its slot at once
                    await asyncio.wait_for(self._wake.wait(), POLL_S if is_busy else IDLE_POLL_S)
                self._wake.clear()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel the lines running here and give every lease back (they run again, here or elsewhere)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            released = await self.store.release_lines(self.worker)
            if released:
                log.info("batch runner: %d lines given back to run later", released)

    async def step(self) -> bool:
        """One round: finalize what is done, claim what fits, renew leases. True while lines wait or run."""
        try:
            active = await self.store.batches_in(ACTIVE)
            await self.claim({b.id: b.endpoint for b in active if b.status == "in_progress"})
            if time.monotonic() - self._checked >= POLL_S:  # not at every line's end: its queries cost the engine
                self._checked = time.monotonic()
                for batch in active:
                    await self.finish_if_done(batch)
            await self.renew()
            await self.count()
        except Exception:  # a database hiccup: the next round tries again
            log.exception("batch runner: a round failed")
            return False
        return bool(self.running) or any(b.status == "in_progress" for b in active)

    async def claim(self, endpoints: dict[str, str]) -> None:
        room = self.state.config.batch.max_lines_in_flight - len(self.running)
        if not endpoints or room < 1 or self.state.lifecycle.phase is not Phase.READY:
            return
        if time.monotonic() < self._paused_until:
            return
        lines = await self.store.claim_lines(self.worker, limit=room,
                                             lease_seconds=self.state.config.batch.lease_seconds)
        for line in lines:
            key = (line.batch_id, line.line_no)
            task = asyncio.create_task(self.run(line, endpoints.get(line.batch_id, "")))
            self.running[key] = task
            task.add_done_callback(functools.partial(self._forget, key))

    def _forget(self, key: tuple[str, int], task: asyncio.Task) -> None:
        self.running.pop(key, None)
        self._wake.set()

    async def run(self, line: ClaimedLine, endpoint: str) -> None:
        try:
            await self._run(line, endpoint)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database failed under it: give the line back (else its lease is renewed forever)
            log.exception("batch %s line %d: its answer could not be recorded; it runs again", line.batch_id,
                          line.line_no)
            with contextlib.suppress(Exception):
                await self.store.release_line(line.batch_id, line.line_no, self.worker)

    async def _run(self, line: ClaimedLine, endpoint: str) -> None:
        outcome = await run_line(self.state, endpoint, line.custom_id, line.body)
        if outcome is None:
            self._paused_until = time.monotonic() + RETRY_PAUSE_S
            await self.store.release_line(line.batch_id, line.line_no, self.worker)
            log.info("batch %s line %d: given back to run later (this server cannot take it now)", line.batch_id,
                     line.line_no)
            return
        is_recorded = await self.store.complete_line(line.batch_id, line.line_no, self.worker,
                                                     status=outcome.status, result=outcome.result)
        self.state.metrics.batch_lines_done.labels(status=outcome.status if is_recorded else "dropped").inc()
        if not is_recorded:
            log.warning("batch %s line %d: its lease went to another worker; this answer is dropped",
                        line.batch_id, line.line_no)

    async def renew(self) -> None:
        lease = self.state.config.batch.lease_seconds
        if self.running and time.monotonic() - self._renewed > lease / 3:
            await self.store.extend_leases(self.worker, lease)
            self._renewed = time.monotonic()

    async def count(self) -> None:
        if time.monotonic() - self._counted < METRICS_S:
            return
        self._counted = time.monotonic()
        batches, lines = await self.store.batch_status_counts()
        self.state.metrics.set_batch_counts(batches, lines)

    async def finish_if_done(self, batch: Batch) -> None:
        """validating -> in_progress; in_progress with every line done -> finalizing -> completed; cancelling with
        none running -> cancelled; past its window -> the rest cancelled, then expired. A batch left finalizing (a
        server died in it) is finalized again."""
        if batch.status not in ACTIVE:
            return
        if batch.status == "validating":  # its lines were queued with it
            await self.store.set_batch_status(batch.id, "in_progress", expected=("validating",))
            return
        is_expired = (batch.status == "in_progress" and batch.expires_at is not None
                      and self.store.clock() > batch.expires_at)
        if batch.status == "cancelling" or is_expired:
            await self.store.cancel_lines(batch.id)  # again: lines given back since the cancel are pending
        counts = await self.store.count_lines(batch.id)
        if counts["running"] or counts["pending"]:
            return
        status = batch.status
        if status == "in_progress" and not is_expired:
            if await self.store.set_batch_status(batch.id, "finalizing", expected=("in_progress",)) is None:
                return
            status = "finalizing"
        final = "expired" if is_expired else {"cancelling": "cancelled", "finalizing": "completed"}[status]
        await self._finalize(batch, final, (status,))

    async def _finalize(self, batch: Batch, final: str, expected: tuple[str, ...]) -> None:
        output = await self._write_file(batch, "succeeded", "output")
        errors = await self._write_file(batch, "failed", "errors")
        done = await self.store.set_batch_status(batch.id, final, expected=expected, output_file_id=output,
                                                 error_file_id=errors)
        if done is not None:
            log.info("batch %s %s", batch.id, final)

    async def _write_file(self, batch: Batch, status: str, kind: str) -> str | None:
        results = await self.store.line_results(batch.id, status)
        if not results:
            return None
        file_id = output_file_id(batch.id, kind)
        record = StoredFile(id=file_id, owner=batch.owner, created_at=self.store.clock(),
                            filename=f"{batch.id}_{kind}.jsonl", purpose="batch_output")
        with contextlib.suppress(DuplicateId):  # written by an earlier finalization of this batch
            await self.store.put_file(record, jsonl([r.result for r in results]))
        return file_id
