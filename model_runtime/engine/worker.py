"""The engine's only thread, and the asyncio bridge to it.

`EngineWorker.generate()` is an async iterator of `RequestOutput`s for one request (all of its
choices, interleaved; it ends when every choice has finished). Requests and aborts reach the
thread through a queue and take effect at the next step boundary; outputs return to the event
loop with `call_soon_threadsafe`. The inbox holds typed messages (`Submit`, `Abort`, `AbortAll`,
`Wake`), handled by type on the thread; the requests it carries are frozen, and the engine's state
of them is the thread's alone. `health()` gives probes the heartbeat and the dead flag;
`drain()` is the graceful stop: stop admitting, let running requests finish until a deadline,
then abort the rest with finish_reason "abort". Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeAlias

from model_runtime.engine.engine import Engine, EngineDeadError
from model_runtime.engine.request import Request, RequestOutput
from model_runtime.engine.stats import EngineStats

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # the heartbeat's period while idle
_DRAIN_POLL_S = 0.02


class EngineDrainingError(RuntimeError):
    """The worker no longer admits requests (graceful shutdown under way)."""


@dataclass(frozen=True)
class WorkerHealth:
    """What liveness and readiness probes need (all times are time.time())."""

    is_alive: bool  # the worker thread runs
    is_dead: bool  # unrecoverable: device error or a crashed thread; the process should exit non-zero
    is_admitting: bool  # False once a drain started
    last_heartbeat: float  # the loop's last turn (every step, and every 0.5 s while idle)
    last_step_time: float  # the last engine step; 0 before the first
    num_unfinished: int  # requests submitted and not finished
    dead_reason: str | None


@dataclass(frozen=True)
class Submit:
    """Add a request to the engine (its output stream is already open)."""

    request: Request


@dataclass(frozen=True)
class Abort:
    """Finish a request with "abort" at the next step boundary; unknown ids are ignored."""

    request_id: str


@dataclass(frozen=True)
class AbortAll:
    """Finish every unfinished request with "abort" (the end of a drain)."""


@dataclass(frozen=True)
class Wake:
    """Nothing to do: wakes an idle thread so it sees `stop()`."""


WorkerMessage: TypeAlias = Submit | Abort | AbortAll | Wake


class EngineWorker:
    def __init__(self, engine: Engine) -> None:
        # NOTE: once started, the engine belongs to the thread; other threads read only what never
        # changes after construction (config, vocab_size, max_model_len) and the `stats()` snapshot.
        self.engine = engine
        self._inbox: queue.Queue[WorkerMessage] = queue.Queue()
        # request id -> (its event loop, its output queue, the request)
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput], Request]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llava-engine", daemon=True)
        self._is_admitting = True
        self._dead_reason: str | None = None
        self.last_heartbeat = time.time()
        self._stats = engine.stats()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after `drain()` for a graceful stop); unfinished requests get "abort"."""
        self._is_admitting = False
        self._stop.set()
        self._inbox.put(Wake())
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def is_admitting(self) -> bool:
        return self._is_admitting

    def stop_admitting(self) -> None:
        """New `generate()` calls raise EngineDrainingError; running requests continue."""
        self._is_admitting = False

    async def drain(self, timeout_s: float) -> int:
        """Stop admitting, wait up to `timeout_s` for unfinished requests, abort the rest.

        Returns how many requests were aborted. Their streams end with finish_reason "abort".
        """
        self.stop_admitting()
        deadline = time.monotonic() + timeout_s
        while self._num_unfinished() and self.is_alive and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        num_aborted = self._num_unfinished()
        if num_aborted and self.is_alive:
            self._inbox.put(AbortAll())
            settle = time.monotonic() + 5.0
            while self._num_unfinished() and self.is_alive and time.monotonic() < settle:
                await asyncio.sleep(_DRAIN_POLL_S)
        return num_aborted

    def stats(self) -> EngineStats:
        return self._stats

    def health(self) -> WorkerHealth:
        stats = self._stats
        dead_reason = self._dead_reason or stats.dead_reason
        return WorkerHealth(
            is_alive=self.is_alive,
            is_dead=dead_reason is not None,
            is_admitting=self._is_admitting,
            last_heartbeat=self.last_heartbeat,
            last_step_time=stats.last_step_time,
            num_unfinished=self._num_unfinished(),
            dead_reason=dead_reason,
        )

    # -- event-loop side --------------------------------------------------------------------
    async def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        if self.health().is_dead or not self.is_alive:
            raise EngineDeadError("the engine worker is not running")
        if not self._is_admitting:
            raise EngineDrainingError("the server is shutting down")
        self.engine.check_request(request)  # the engine's own limits, raised to the caller before it waits
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        with self._lock:
            if request.request_id in self._streams:
                raise ValueError(f"request id {request.request_id!r} is already running")
            self._streams[request.request_id] = (loop, outputs, request)
        self._inbox.put(Submit(request))
        open_choices = set(range(request.params.n))
        try:
            while open_choices:
                out = await outputs.get()
                if out.index not in open_choices:
                    continue  # a late duplicate (error after the choice finished)
                if out.finished:
                    open_choices.discard(out.index)
                yield out
        finally:
            if open_choices:
                self._inbox.put(Abort(request.request_id))
            with self._lock:
                self._streams.pop(request.request_id, None)

    def abort(self, request_id: str) -> None:
        """Abort a request at the next step boundary (thread-safe)."""
        self._inbox.put(Abort(request_id))

    # -- thread side ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self.engine.is_dead:
                self._drain_inbox(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._deliver(self.engine.step())
                self._stats = self.engine.stats()
                self.last_heartbeat = time.time()
        except Exception as error:
            log.critical("the engine worker crashed", exc_info=error)
            self._dead_reason = f"worker crashed: {type(error).__name__}"
            self._fail_open_streams()
        finally:
            if self.engine.is_dead:
                self._fail_open_streams()
            elif self._stop.is_set():
                self._deliver(self.engine.abort_all())
            self._stats = self.engine.stats()

    def _drain_inbox(self, block: bool) -> None:
        try:
            message = self._inbox.get(timeout=_IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(message)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, message: WorkerMessage) -> None:
        match message:
            case Submit(request):
                self._add(request)
            case Abort(request_id):
                self._deliver(self.engine.abort_request(request_id))
            case AbortAll():
                self._deliver(self.engine.abort_all())
            case Wake():
                pass
            case _:
                raise TypeError(f"not a worker message: {message!r}")

    def _add(self, request: Request) -> None:
        with self._lock:
            is_open = request.request_id in self._streams
        if not is_open:
            return  # the caller left before the thread saw the request
        try:
            self.engine.add_request(request)
        except (ValueError, EngineDeadError) as error:
            log.error("request %s refused by the engine: %s", request.request_id, error)
            self._deliver(_error_outputs(request, str(error), is_engine_dead=isinstance(error, EngineDeadError)))

    def _fail_open_streams(self) -> None:
        with self._lock:
            requests = [request for _, _, request in self._streams.values()]
        for request in requests:
            self.engine.abort_request(request.request_id)
            self._deliver(_error_outputs(request, "the engine worker stopped", is_engine_dead=True))

    def _num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._lock:
                target = self._streams.get(out.request_id)
            if target is None:
                continue
            loop, stream, _ = target
            try:
                loop.call_soon_threadsafe(stream.put_nowait, out)
            except RuntimeError:
                log.warning("event loop closed; dropping output for %s", out.request_id)


def _error_outputs(request: Request, detail: str, is_engine_dead: bool) -> list[RequestOutput]:
    return [
        RequestOutput(request_id=request.request_id, index=i, new_token_ids=[], text="", finished=True,
                      finish_reason="error", num_prompt_tokens=request.num_prompt_tokens, num_output_tokens=0,
                      error=detail, is_engine_dead=is_engine_dead)
        for i in range(request.params.n)
    ]

