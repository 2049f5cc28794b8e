"""Process faults: SIGTERM at full load (no torn stream) and a stalled engine step (/ready turns 503).

- `sigterm`: streams fill the batch and the queue, then SIGTERM with a 2 s drain: every stream
  must end with a finish_reason (or an error event) and `data: [DONE]`, a request sent during
  the drain gets a 503, and the process exits 0.
- `stall`: the fault launcher (fault_server.py) stalls engine step 1 for `STALL_S`; /ready must
  turn 503 during the stall (the time it took a bound of `--ready-stall-timeout` + 1 s), then 200
  again, and the request must complete.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from bench.stress.bounds import bound, broken
from bench.stress.faults import chat, gauge, wait_until
from bench.stress.server import Server, stop_server
from testkit.media import data_url, image_bytes

STALL_TIMEOUT_S = 2.0
STALL_S = 6.0
LAUNCHER = "bench.stress.fault_server"
SIGTERM_FLAGS = ("--media-workers", "2", "--max-num-seqs", "8", "--shutdown-timeout", "2")
STALL_FLAGS = (
    "--ready-stall-timeout",
    str(STALL_TIMEOUT_S),
    "--stall-at-step",
    "1",
    "--stall-seconds",
    str(STALL_S),
)


def read_stream(server: Server, body: dict, out: dict, started: threading.Event) -> None:
    """Read one streamed chat to its end into `out`: status, data events, whether it ended cleanly."""
    events: list[str] = []
    try:
        with (
            httpx.Client(timeout=120) as client,
            client.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response,
        ):
            out["status"] = response.status_code
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    started.set()
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    finally:
        started.set()
    out["events"] = len(events)
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    finished = any(c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", []))
    errored = any("error" in chunk for chunk in chunks)
    out["finish_reasons"] = sorted(
        {c["finish_reason"] for chunk in chunks for c in chunk.get("choices", []) if c.get("finish_reason")}
    )
    out["clean"] = out.get("status") != 200 or (
        bool(events) and events[-1] == "[DONE]" and (finished or errored)
    )


def sigterm(server: Server, num_streams: int = 16) -> dict:
    """`server` runs with SIGTERM_FLAGS (or at least a 2 s --shutdown-timeout); it is stopped here."""
    image = [
        {"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes(seed=3))}},
        {"type": "text", "text": "Describe it."},
    ]
    bodies = [
        chat("Talk forever." if k % 2 else image, max_tokens=3000 if k % 4 else 8, stream=True)
        for k in range(num_streams)
    ]
    results: list[dict] = [{} for _ in bodies]
    threads, starts = [], []
    for body, out in zip(bodies, results, strict=True):
        started = threading.Event()
        threads.append(threading.Thread(target=read_stream, args=(server, body, out, started)))
        starts.append(started)
        threads[-1].start()
    for started in starts:
        started.wait(60)
    running = gauge(server, "llava_requests_running")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        during = httpx.post(
            server.base_url + "/v1/chat/completions", json=chat("late"), timeout=10
        ).status_code
    except httpx.HTTPError:
        during = 0
    for t in threads:
        t.join(60)
    exit_status = stop_server(server)
    torn = [r for r in results if not r.get("clean")]
    result = {
        "streams": len(results),
        "running_at_sigterm": running,
        "torn_streams": len(torn),
        "finish_reasons": sorted({f for r in results for f in r.get("finish_reasons", [])}),
        "status_during_drain": during,
        "exit_status": exit_status,
        "torn_examples": torn[:3],
    }
    result["passed"] = not torn and during == 503 and exit_status == 0
    return result


def stall(server: Server, stall_s: float = STALL_S) -> dict:
    """`server` is the fault launcher with STALL_FLAGS, not yet sent a request (its step 1 stalls)."""
    answer: list[int] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            httpx.post(server.base_url + "/v1/chat/completions", json=chat("hello"), timeout=60).status_code
        )
    )
    thread.start()
    not_ready_s = wait_until(lambda: server.ready_status() == 503, stall_s + 5, 0.05)
    ready_again_s = wait_until(lambda: server.ready_status() == 200, stall_s + 10, 0.05)
    thread.join(60)
    limit = STALL_TIMEOUT_S + 1.0
    result = {
        "stall_s": stall_s,
        "ready_stall_timeout_s": STALL_TIMEOUT_S,
        "not_ready_after_s": round(not_ready_s, 2) if not_ready_s is not None else None,
        "limit_s": limit,
        "ready_again_after_s": round(ready_again_s, 2) if ready_again_s is not None else None,
        "request_status": answer[0] if answer else None,
    }
    violations = {}
    if not_ready_s is None:
        violations["/ready never 503 during the stall"] = 1
    if ready_again_s is None:
        violations["/ready not 200 again after the stall"] = 1
    if result["request_status"] != 200:
        violations["the stalled request failed"] = 1
    bounds = {"not_ready_after_s": bound(result["not_ready_after_s"], limit, "s")}
    return {
        **result,
        "violations": violations,
        "bounds": bounds,
        "passed": not violations and not broken(bounds),
    }
