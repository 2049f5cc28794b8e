"""`python -m bench.stress`: every reliability part against real server processes, one command.

Each part starts its own `llava-serve serve` on 127.0.0.1 with the demo model (random weights,
float32), runs a bounded number of cases for a bounded time, stops the server and writes
`<out>/<part>.json`; `<out>/summary.json` gathers the figures with the command and the date.
The exit status is 1 when any part found a violation. docs/RELIABILITY.md publishes the figures.

    .venv/bin/python -m bench.stress --out bench/results/stress
    .venv/bin/python -m bench.stress --parts fuzz,media --fuzz-cases 500 --media-mutants 50
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
import time
from pathlib import Path

from bench.stress import media
from bench.stress.bounds import broken
from bench.stress.server import demo_model, start_server, stop_server

PARTS = ["fuzz", "media", "overload", "faults", "integrity", "soak"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/stress"))
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"], help="demo model size (with audio)")
    p.add_argument("--model", help="a checkpoint folder instead of the demo model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fuzz-cases", type=int, default=5000)
    p.add_argument(
        "--fuzz-per-operation",
        type=int,
        default=0,
        help="schemathesis cases for every operation of the OpenAPI schema (half positive, half negative) "
        "instead of a share of --fuzz-cases; mutants of chat bodies fill the rest of --fuzz-cases",
    )
    p.add_argument("--media-mutants", type=int, default=500, help="mutants per format")
    p.add_argument("--media-formats", help="comma-separated subset of " + ",".join(media.FORMATS))
    p.add_argument("--overload-seconds", type=float, default=60.0)
    p.add_argument("--integrity-clients", type=int, default=64)
    p.add_argument("--integrity-rounds", type=int, default=10)
    p.add_argument("--soak-minutes", type=float, default=30.0)
    p.add_argument("--soak-rate", type=float, default=2.0, help="soak requests started per second")
    p.add_argument("--concurrency", type=int, default=4, help="mutated media requests in flight")
    args = p.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    return args


def run_part(name: str, args: argparse.Namespace, model: str) -> dict:
    logs = args.out / "logs"
    part = importlib.import_module(f"bench.stress.{name}")
    if name == "fuzz":
        server = start_server(model, logs, "--max-model-len", "512", "--media-workers", "2", name=name)
        try:
            return part.run(server, args.fuzz_cases, args.seed, per_operation=args.fuzz_per_operation)
        finally:
            stop_server(server)
    if name == "media":
        server = start_server(model, logs, "--media-workers", "2", name=name)
        try:
            formats = args.media_formats.split(",") if args.media_formats else None
            return part.run(server, args.media_mutants, args.seed, args.concurrency, 2, formats)
        finally:
            stop_server(server)
    if name == "overload":
        return part.run(model, logs, args.overload_seconds)
    if name == "faults":
        return part.run(model, logs)
    if name == "integrity":
        return part.run(model, logs, args.integrity_clients, args.integrity_rounds, args.seed)
    return part.run(model, logs, args.soak_minutes * 60, args.soak_rate, args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or demo_model(args.size, args.out / "model")
    command = "python -m bench.stress " + " ".join(argv if argv is not None else sys.argv[1:])
    summary_path = args.out / "summary.json"
    failed = []
    for name in args.parts.split(","):
        started = time.monotonic()
        print(f"[stress] {name} ...", flush=True)
        result = run_part(name, args, model)
        result["command"] = command
        result["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        result["machine"] = f"{platform.machine()}, {platform.python_version()}, model {Path(model).name}"
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}  # parts may run apart
        summary[name] = {k: v for k, v in result.items() if k not in ("examples", "formats", "samples")}
        summary_path.write_text(json.dumps(summary, indent=1))
        late = broken(result.get("bounds", {}))
        status = "passed" if result["passed"] else f"FAILED: {result.get('violations')} {late or ''}"
        print(f"[stress] {name}: {status} in {time.monotonic() - started:.0f} s", flush=True)
        if not result["passed"]:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
