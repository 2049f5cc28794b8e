"""The engine's only thread, and the asyncio bridge to it.

`EngineWorker.generate()` is an async iterator of `RequestOutput`s for one request. Requests and
aborts reach the thread through a queue; outputs return to the event loop with
`call_soon_threadsafe`. The thread steps the engine while it has work and sleeps otherwise;
`last_heartbeat` tells readiness probes that it is alive.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator

from model_runtime.engine.engine import Engine, EngineStats
from model_runtime.engine.request import Request, RequestOutput

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5


class EngineDeadError(RuntimeError):
    """The worker thread is not running; no request can be served."""


class EngineWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.Queue[tuple[str, object]] = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llava-engine", daemon=True)
        self.last_heartbeat = time.time()
        self._stats = engine.stats()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self._stats

    # -- event-loop side --------------------------------------------------------------------
    async def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        if not self.is_alive:
            raise EngineDeadError("the engine worker is not running")
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        with self._lock:
            self._streams[request.request_id] = (loop, outputs)
        self._inbox.put(("add", request))
        finished = False
        try:
            while not finished:
                out = await outputs.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self._inbox.put(("abort", request.request_id))
            with self._lock:
                self._streams.pop(request.request_id, None)

    # -- thread side ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox(block=not self.engine.has_unfinished())
            if self.engine.has_unfinished():
                self._deliver(self.engine.step())
            self._stats = self.engine.stats()
            self.last_heartbeat = time.time()

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=_IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "add":
                self.engine.add_request(payload)
            elif kind == "abort":
                out = self.engine.abort_request(payload)
                if out is not None:
                    self._deliver([out])
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._lock:
                target = self._streams.get(out.request_id)
            if target is None:
                continue
            loop, stream = target
            try:
                loop.call_soon_threadsafe(stream.put_nowait, out)
            except RuntimeError:
                log.warning("event loop closed; dropping output for %s", out.request_id)
