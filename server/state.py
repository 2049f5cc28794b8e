"""ServerState: the one typed object every route reads (`app.state.server`; a route takes it as `state: State`).

It holds what lives as long as the app: the config, the lifecycle, the metrics, the decode pool
and the media fetcher, and, once the model serves, the `Runtime` (model, engine worker, media
loader). Built once by `create_app`; the lifespan (server/lifespan.py) fills in the runtime.
Knows no route.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from model_runtime import EngineStats, EngineWorker, GrammarCompiler, LoadedModel
from server.config import ServerConfig
from server.errors import APIError, NotReady, ShuttingDown
from server.lifecycle import Lifecycle, Phase
from server.media.fetch import MediaFetcher
from server.media.loader import MediaLoader
from server.media.pool import DecodePool
from server.metrics import Metrics
from server.store import StateStore


@dataclass
class Runtime:
    """What serving needs once the model is loaded."""

    loaded: LoadedModel
    worker: EngineWorker
    media: MediaLoader
    context_len: int  # prompt + output tokens, at most what the KV cache holds
    started: int  # unix time the model became ready
    grammars: GrammarCompiler | None  # None: this tokenizer cannot drive a grammar (no structured outputs)


@dataclass
class ServerState:
    config: ServerConfig
    lifecycle: Lifecycle
    pool: DecodePool  # the isolated media decoders
    fetcher: MediaFetcher
    metrics: Metrics = field(init=False)
    runtime: Runtime | None = None  # set by the lifespan once the model serves
    store: StateStore | None = None  # the state database (server/store/), opened by the lifespan before it serves
    engine_ids: set[str] = field(default_factory=set)  # requests in flight: a client's x-request-id names its own
    request_exit: Callable[[], None] | None = None  # set by the runner: called when the process must exit

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.engine_stats, lambda: self.lifecycle.num_waiting)

    @classmethod
    def build(cls, config: ServerConfig, clock: Callable[[], float] = time.time) -> ServerState:
        lifecycle = Lifecycle(config.max_queued_requests, config.shutdown_timeout, config.ready_stall_seconds, clock)
        return cls(config, lifecycle, DecodePool(config.media_workers, config.media_worker_memory_mb),
                   MediaFetcher(config.fetch))

    def engine_stats(self) -> EngineStats | None:
        return self.runtime.worker.stats() if self.runtime is not None else None

    def serving_runtime(self) -> Runtime:
        """The runtime, or the 503 that says why generation requests cannot be served now."""
        try:
            self.lifecycle.check_serving()
        except APIError as e:
            self.metrics.rejected.labels(reason="shutting_down" if isinstance(e, ShuttingDown) else "not_ready").inc()
            raise
        assert self.runtime is not None  # check_serving passes only once the worker runs
        return self.runtime

    def state_store(self) -> StateStore:
        """The state database, or the 503 while it is not open (start-up has not reached it, or failed)."""
        if self.store is None:
            raise NotReady("the state database is not open")
        return self.store

    def check_queue(self) -> None:
        """Before a chat request's body is read: the 429 while the admission queue is full."""
        if self.lifecycle.phase is Phase.READY:  # other phases answer from the route, with their own reasons
            try:
                self.lifecycle.check_queue()
            except APIError:
                self.metrics.rejected.labels(reason="queue_full").inc()
                raise

    def count_error(self, error: APIError) -> None:
        self.metrics.errors.labels(code=error.code).inc()

    def exit(self) -> None:
        """Ask the process to exit (the lifecycle's exit status says how)."""
        if self.request_exit is not None:
            self.request_exit()


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]  # a route's parameter: the app's ServerState
