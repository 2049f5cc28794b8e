"""`llava-serve run-batch`: a batch input file run offline, with no HTTP server and no state database.

The model loads as `serve` loads it and each line runs through the same pipeline (execute.py), so
its output line equals the server's. Lines may name any of the three endpoints. Every answer
(200 or the API's refusal) is appended to the output file as soon as it is known, in OpenAI's
output line format, so `--resume` after a crash skips the custom_ids the file holds already. A
progress bar shows lines, tokens/s and the time left; a summary ends the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from server.batch.execute import LineOutcome, run_line
from server.batch.lines import jsonl, parse_input
from server.config import ServerConfig
from server.lifecycle import Phase
from server.lifespan import load_checkpoint, start_runtime
from server.state import ServerState
from server.store import BatchLine

log = logging.getLogger("llava_serve")

RETRY_PAUSE_S = 0.5  # the engine's queue is full: the line waits its turn


@dataclass
class Summary:
    num_succeeded: int = 0
    num_failed: int = 0
    num_skipped: int = 0  # answered already in the output file (--resume)
    num_output_tokens: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.num_output_tokens / self.seconds if self.seconds else 0.0
        return (f"run-batch: {self.num_succeeded} succeeded, {self.num_failed} failed, {self.num_skipped} skipped "
                f"(in the output already); {self.num_output_tokens} output tokens in {self.seconds:.1f} s "
                f"({rate:.1f} tokens/s)")


class InputRefused(Exception):
    """The input file fails the batch checks (each error with its line)."""


def answered_ids(path: Path) -> set[str]:
    """The custom_ids an output file holds; a last line a crash cut short is removed (it runs again)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    ids = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(raw)["custom_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def read_lines(config: ServerConfig, input_path: Path) -> tuple[list[BatchLine], dict[int, str]]:
    parsed = parse_input(input_path.read_bytes(), None, config.served_model_name)
    if parsed.errors:
        shown = "; ".join(f"line {e['line']}: {e['message']}" if e["line"] else e["message"] for e in parsed.errors)
        raise InputRefused(f"{input_path}: {shown}")
    return parsed.lines, parsed.urls


async def run_offline(config: ServerConfig, input_path: Path, output_path: Path, resume: bool) -> Summary:
    """Run every line not yet answered (with `resume`) and append its answer to `output_path`."""
    lines, urls = read_lines(config, input_path)
    done = answered_ids(output_path) if resume else set()
    todo = [line for line in lines if line.custom_id not in done]
    summary = Summary(num_skipped=len(lines) - len(todo))
    state = ServerState.build(config)
    await state.pool.start()
    try:
        await start_runtime(state, lambda: load_checkpoint(config))
        if state.lifecycle.phase is Phase.FAILED:
            raise RuntimeError(state.lifecycle.failure)
        started = time.monotonic()
        with output_path.open("a" if resume else "w", encoding="utf-8") as out, \
                tqdm(total=len(todo), unit="line", file=sys.stderr, dynamic_ncols=True) as bar:
            await _run_all(state, todo, urls, out, bar, summary, started)
        summary.seconds = time.monotonic() - started
    finally:
        if state.runtime is not None:
            await asyncio.to_thread(state.runtime.worker.stop)
        await state.pool.close()
    return summary


async def _run_all(state: ServerState, todo: list[BatchLine], urls: dict[int, str], out: IO[str], bar: tqdm,
                   summary: Summary, started: float) -> None:
    slots = asyncio.Semaphore(state.config.batch.max_lines_in_flight)

    async def one(line: BatchLine) -> None:
        async with slots:
            outcome = await _answer(state, urls[line.line_no], line)
        out.write(jsonl([outcome.result]).decode())
        out.flush()
        if outcome.status == "succeeded":
            summary.num_succeeded += 1
            summary.num_output_tokens += _output_tokens(outcome.result["response"]["body"])
        else:
            summary.num_failed += 1
        elapsed = max(time.monotonic() - started, 1e-9)
        bar.set_postfix_str(f"{summary.num_output_tokens / elapsed:.1f} tok/s, {summary.num_failed} failed",
                            refresh=False)
        bar.update(1)

    await asyncio.gather(*(one(line) for line in todo))


async def _answer(state: ServerState, url: str, line: BatchLine) -> LineOutcome:
    while True:
        outcome = await run_line(state, url, line.custom_id, line.body)
        if outcome is not None:
            return outcome
        health = state.lifecycle.health()
        if health is None or health.is_dead or not health.is_alive:
            raise RuntimeError("the engine worker has stopped")
        await asyncio.sleep(RETRY_PAUSE_S)


def _output_tokens(body: dict[str, Any]) -> int:
    usage = body.get("usage") or {}
    return int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
