"""`python -m bench.stress.fault_server serve --stall-at-step N --stall-seconds S <serve flags>`.

The real server (same flags, same app, same uvicorn runner) with an engine stall injected through
tests/faults.py (the engine runner's forward hook, which no production flag reaches): the LM
forward of engine step N sleeps S seconds, as a hung device would. The faults part uses it to
time /ready's 503. The hook is installed as soon as the engine runs, before it has run a step:
the lifespan polls for the runtime every few milliseconds (a request needs longer to reach it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.cli import build_parser, config_from_args
from server.runner import DrainingServer
from server.state import ServerState
from testkit.faults import FaultInjection, inject

_POLL_S = 0.005


def with_faults(app: FastAPI, faults: FaultInjection) -> None:
    """Wrap the app's lifespan: install `faults` on the engine once it runs."""
    inner = app.router.lifespan_context

    async def install(state: ServerState) -> None:
        while state.runtime is None:
            await asyncio.sleep(_POLL_S)
        inject(state.runtime.worker.engine, faults)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            installing = asyncio.create_task(install(app.state.server))
            try:
                yield
            finally:
                installing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await installing

    app.router.lifespan_context = lifespan


def main(argv: list[str] | None = None) -> int:
    faults = argparse.ArgumentParser(add_help=False)
    faults.add_argument("--stall-at-step", type=int, required=True)
    faults.add_argument("--stall-seconds", type=float, required=True)
    fault_args, rest = faults.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = config_from_args(args)
    app = create_app(config)
    with_faults(app, FaultInjection(stall_at_step=fault_args.stall_at_step, stall_seconds=fault_args.stall_seconds))
    state = app.state.server
    server = DrainingServer(
        uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, lifespan="on"),
        state.lifecycle,
    )
    state.request_exit = server.request_exit
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
