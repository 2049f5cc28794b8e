"""Run the app under uvicorn with llava-serve's shutdown: SIGTERM drains, then exits 0.

uvicorn alone stops listening at SIGTERM and re-raises the signal when done (exit code -15).
Here the first SIGTERM/SIGINT starts the drain (spec section 5: /ready 503 at once, new
requests 503, in-flight requests finish until --shutdown-timeout, the rest end with "abort"),
then uvicorn shuts down and the process exits 0. A second signal exits at once. If the engine
dies, the app asks for an exit and the process exits 1 so an orchestrator restarts it; a model
that cannot be loaded exits 2 with one line on stderr (`llava-serve serve: error: ...`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn

from server.app import create_app
from server.config import ServerConfig
from server.lifecycle import Phase

log = logging.getLogger("llava_serve")

_CLOSE_CONNECTIONS_S = 5  # after the drain: uvicorn's wait for open connections


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is None or self._drain_task is not None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        log.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.lifecycle.drain()
        finally:
            self.should_exit = True

    def request_exit(self) -> None:
        """The engine died: stop now (the exit code says it)."""
        self.should_exit = True


def run_server(config: ServerConfig) -> int:
    app = create_app(config)
    state = app.state.server
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               timeout_graceful_shutdown=_CLOSE_CONNECTIONS_S, lifespan="on")
    server = DrainingServer(uv_config, state.lifecycle)
    state.request_exit = server.request_exit
    server.run()
    lifecycle = state.lifecycle
    if lifecycle.phase is Phase.FAILED:
        print(f"llava-serve serve: error: {lifecycle.failure}", file=sys.stderr, flush=True)
        return lifecycle.exit_status
    return 0
