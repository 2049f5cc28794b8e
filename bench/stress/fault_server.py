"""`python -m bench.stress.fault_server serve --stall-at-step N --stall-seconds S <serve flags>`.

The real server (same flags, same app, same uvicorn runner) with an engine stall injected through
`FaultInjection` (a test hook that no production flag reaches): the LM forward of engine step N
sleeps S seconds, as a hung device would. The faults part uses it to time /ready's 503.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from model_runtime import FaultInjection
from server.app import create_app
from server.cli import build_parser, config_from_args
from server.runner import DrainingServer


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
    app = create_app(
        config,
        fault_injection=FaultInjection(
            stall_at_step=fault_args.stall_at_step, stall_seconds=fault_args.stall_seconds
        ),
    )
    server = DrainingServer(
        uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, lifespan="on"),
        app.state.lifecycle,
    )
    app.state.request_exit = server.request_exit
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
