"""The server's life: loading -> ready -> draining -> stopped (or failed), admission, readiness.

Admission bounds the requests admitted and not yet running (`--max-queued-requests`): beyond it
429 before any media work. Readiness is true only when the model is loaded, the engine worker is
alive, its heartbeat is fresh and it steps when work is pending. A drain (SIGTERM) makes /ready
and new requests 503 at once, lets in-flight requests finish until `--shutdown-timeout`, then
cancels those still preparing and aborts those generating (their streams end with "abort").
Knows nothing of routes; the clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable

from model_runtime import EngineWorker, WorkerHealth
from server.errors import NotReady, ServerOverloaded, ShuttingDown

log = logging.getLogger(__name__)

_POLL_S = 0.05
_SETTLE_S = 5.0  # after aborting at the deadline, time for handlers to write their last bytes


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class Ticket:
    """One admitted request: waiting until `start()`, in flight until `close()`."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self.is_waiting = True
        self.is_closed = False
        self.preparing: asyncio.Task | None = None  # cancelled when a drain times out

    def start(self) -> None:
        if self.is_waiting:
            self.is_waiting = False
            self._lifecycle.num_waiting -= 1

    def close(self) -> None:
        if not self.is_closed:
            self.start()
            self.is_closed = True
            self._lifecycle.tickets.discard(self)


class Lifecycle:
    def __init__(self, max_waiting: int, shutdown_timeout: float, stall_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_waiting = max_waiting
        self.shutdown_timeout = shutdown_timeout
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.phase = Phase.LOADING
        self.failure: str | None = None
        self.exit_status = 0  # what the process exits with once FAILED: 2 a model that cannot load, 1 a dead engine
        self.num_waiting = 0
        self.tickets: set[Ticket] = set()
        self.worker: EngineWorker | None = None

    @property
    def num_in_flight(self) -> int:
        return len(self.tickets)

    def mark_ready(self, worker: EngineWorker) -> None:
        self.worker = worker
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY

    def mark_failed(self, reason: str, exit_status: int = 1) -> None:
        self.failure = reason
        self.exit_status = exit_status
        self.phase = Phase.FAILED

    # -- admission --------------------------------------------------------------------------
    def check_serving(self) -> None:
        """Raise the 503 that says why generation requests cannot be served now."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            raise ShuttingDown()
        if self.phase is Phase.LOADING:
            raise NotReady("the model is still loading")
        health = self.health()
        if self.phase is Phase.FAILED or health is None or not health.is_alive or health.is_dead:
            raise NotReady("the engine worker has stopped")

    def admit(self) -> Ticket:
        self.check_serving()
        self.check_queue()
        ticket = Ticket(self)
        self.num_waiting += 1
        self.tickets.add(ticket)
        return ticket

    def check_queue(self) -> None:
        """Raise the 429 when the admission queue is full (also called before a request body is read)."""
        if self.num_waiting >= self.max_waiting:
            raise ServerOverloaded(f"the server has {self.num_waiting} requests waiting; retry shortly")

    # -- probes -----------------------------------------------------------------------------
    def health(self) -> WorkerHealth | None:
        return self.worker.health() if self.worker is not None else None

    def is_live(self) -> bool:
        """/health: the process runs and so does the engine thread (once started)."""
        if self.phase is Phase.FAILED:
            return False
        health = self.health()
        return health is None or (health.is_alive and not health.is_dead)

    def not_ready_reason(self) -> str | None:
        """/ready: None when ready, else why not."""
        if self.phase is not Phase.READY:
            return {Phase.LOADING: "loading", Phase.DRAINING: "draining", Phase.STOPPED: "stopped"}.get(
                self.phase, "failed")
        health = self.health()
        if health is None or not health.is_alive or health.is_dead:
            return "engine worker stopped"
        now = self.clock()
        if now - health.last_heartbeat > self.stall_seconds:
            return "engine worker stalled"
        if health.num_unfinished and health.last_step_time and now - health.last_step_time > self.stall_seconds:
            return "engine worker makes no progress"
        return None

    # -- drain ------------------------------------------------------------------------------
    async def drain(self) -> int:
        """SIGTERM: stop admitting, wait for in-flight requests, abort the rest. Returns how many were cut."""
        if self.phase is Phase.READY or self.phase is Phase.LOADING:
            self.phase = Phase.DRAINING
        log.info("draining: %d requests in flight, up to %.0f s", self.num_in_flight, self.shutdown_timeout)
        deadline = time.monotonic() + self.shutdown_timeout
        while self.tickets and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        num_cut = self.num_in_flight
        for ticket in list(self.tickets):
            if ticket.preparing is not None and not ticket.preparing.done():
                ticket.preparing.cancel()
        if self.worker is not None:
            await self.worker.drain(0)  # stops admitting; aborts what is still generating
        settle = time.monotonic() + _SETTLE_S
        while self.tickets and time.monotonic() < settle:
            await asyncio.sleep(_POLL_S)
        if num_cut:
            log.warning("drain deadline reached: %d requests ended with finish_reason abort", num_cut)
        if self.phase is Phase.DRAINING:
            self.phase = Phase.STOPPED
        return num_cut
