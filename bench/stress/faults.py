"""Faults during traffic: a killed decoder, clients that leave at each stage (and `run` for all faults).

- `decoder_kill`: a slow video is being decoded while text requests run; its decoder process gets
  SIGKILL. That request must fail cleanly (a 4xx in the OpenAI shape), the pool must come back to
  its size with a new process, the text requests must all succeed and a valid image after it too.
- `disconnects`: a raw socket sends a request and closes at one stage: during the fetch (a slow
  loopback origin), the decode (a slow video), the queue (behind a running request), the prefill
  (a long prompt in 16-token chunks) and the decode steps (after the first streamed token). The
  slot, the ticket and the KV blocks must be freed (the idle gauges), each stage's time to free
  them a bound of `FREE_LIMIT_S`.
- SIGTERM at full load and a stalled engine step: process_faults.py.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import numpy as np

from bench.stress.bounds import bound, broken
from bench.stress.media import pool_size
from bench.stress.server import MODEL_NAME, Server, error_shape_problem, start_server, stop_server
from testkit.media import data_url, image_bytes
from testkit.origin import Origin

FREE_LIMIT_S = 2.0


@functools.cache
def slow_video(seconds: float = 20.0, fps: int = 25) -> bytes:
    """A 640x480 MPEG-4 clip with one keyframe: each sampled frame decodes from the start (slow)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.codec_context.gop_size = 10**6
        noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        for k in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(noise, k, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def chat(content, max_tokens: int = 4, **extra) -> dict:
    return {
        "model": MODEL_NAME,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def video_chat(video: bytes) -> dict:
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", video), "num_frames": 32}}
    return chat([part, {"type": "text", "text": "What happens?"}], max_tokens=1)


class RawRequest:
    """A chat POST on a raw socket, so the client can leave at an exact moment."""

    def __init__(self, server: Server, body: dict) -> None:
        port = int(server.base_url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port))
        data = json.dumps(body).encode()
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        self.sock.sendall((head + f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
        self.sock.setblocking(False)
        self.data = b""

    def read(self) -> bytes:
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except BlockingIOError:
            pass
        return self.data

    def close(self) -> None:
        self.sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.01) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(period)
    return None


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError):
        return 0


def busy_decoder(server: Server, timeout: float = 30.0) -> int | None:
    """A decoder process that is using the CPU now (the one decoding our request)."""
    found: list[int] = []

    def check() -> bool:
        before = {p: cpu_ticks(p) for p in server.decoder_pids()}
        time.sleep(0.05)
        found[:] = [p for p, t in before.items() if cpu_ticks(p) - t >= 2]
        return bool(found)

    return found[0] if wait_until(check, timeout, 0.0) is not None else None


def gauge(server: Server, name: str) -> float:
    return server.metrics().get(name, 0.0)


def is_idle(server: Server, media_workers: int | None = None) -> bool:
    values = server.metrics()
    idle = not any(
        values.get(g, 0.0)
        for g in (
            "llava_requests_running",
            "llava_requests_waiting",
            "llava_batch_size",
            'llava_kv_cache_blocks{state="used"}',
        )
    )
    return idle and (media_workers is None or len(server.decoder_pids()) == media_workers)


def decoder_kill(server: Server, media_workers: int = 2, video_s: float = 20.0) -> dict:
    """`media_workers`: the server's --media-workers."""
    video = slow_video(video_s)
    others: list[int] = []
    stop = threading.Event()

    def text_traffic() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            while not stop.is_set():
                others.append(client.post("/v1/chat/completions", json=chat("Hello there.")).status_code)

    try:
        traffic = [threading.Thread(target=text_traffic) for _ in range(2)]
        for t in traffic:
            t.start()
        before = set(server.decoder_pids())
        answer: list[httpx.Response] = []
        victim_thread = threading.Thread(
            target=lambda: answer.append(
                httpx.post(server.base_url + "/v1/chat/completions", json=video_chat(video), timeout=120)
            )
        )
        victim_thread.start()
        victim = busy_decoder(server)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        victim_thread.join(120)
        workers = pool_size(server, media_workers)
        after = set(server.decoder_pids())
        image = httpx.post(
            server.base_url + "/v1/chat/completions",
            timeout=60,
            json=chat([{"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes())}}]),
        )
        stop.set()
        for t in traffic:
            t.join(60)
        gauges = server.idle_gauges()
    finally:
        stop.set()
    response = answer[0] if answer else None
    status = response.status_code if response is not None else 0
    result = {
        "killed_pid_was_a_decoder": victim in before if victim else False,
        "request_status": status,
        "request_error": response.json().get("error", {}).get("code") if status >= 400 else None,
        "decoders_after": workers,
        "decoder_replaced": victim is not None and victim not in after,
        "valid_image_after": image.status_code,
        "other_requests": len(others),
        "other_requests_failed": sum(1 for s in others if s != 200),
        "idle_gauges": gauges,
    }
    result["passed"] = bool(
        victim
        and result["killed_pid_was_a_decoder"]
        and 400 <= status < 500
        and not error_shape_problem(status, response.content)
        and workers == media_workers
        and result["decoder_replaced"]
        and image.status_code == 200
        and others
        and not result["other_requests_failed"]
        and not any(gauges.values())
    )
    return result


def disconnects(server: Server, video_s: float = 20.0) -> dict:
    """`server` runs with DISCONNECT_FLAGS."""
    origin = Origin()
    slow_url = origin.add("/slow.png", image_bytes(), delay=10.0)
    video = slow_video(video_s)
    stages: dict[str, dict] = {}

    def leave(
        stage: str, body: dict, reached: Callable[[RawRequest], bool], media_workers: int | None = None
    ) -> None:
        raw = RawRequest(server, body)
        reached_s = wait_until(lambda: reached(raw), 60.0)
        raw.close()
        freed_s = wait_until(lambda: is_idle(server, media_workers), 30.0, 0.02)
        stages[stage] = {
            "reached": reached_s is not None,
            "freed_s": round(freed_s, 3) if freed_s is not None else None,
        }

    try:
        leave(
            "fetch",
            chat([{"type": "image_url", "image_url": {"url": slow_url}}]),
            lambda raw: origin.hits["/slow.png"] > 0,
        )
        leave("decode", video_chat(video), lambda raw: busy_decoder(server, 0.2) is not None, media_workers=2)
        blocker = RawRequest(server, chat("Keep talking.", max_tokens=1000, stream=True))
        wait_until(lambda: gauge(server, "llava_requests_running") == 1, 30.0)
        raw = RawRequest(server, chat("Wait your turn."))
        reached = wait_until(lambda: gauge(server, "llava_requests_waiting") == 1, 30.0)
        raw.close()
        freed = wait_until(lambda: gauge(server, "llava_requests_waiting") == 0, 30.0, 0.02)
        stages["queue"] = {
            "reached": reached is not None,
            "freed_s": round(freed, 3) if freed is not None else None,
        }
        blocker.close()
        wait_until(lambda: is_idle(server), 30.0)
        leave(
            "prefill",
            chat("word " * 700, max_tokens=1),
            lambda raw: gauge(server, "llava_requests_running") == 1 and not raw.read(),
        )
        leave(
            "decode_steps",
            chat("Tell a long story.", max_tokens=1000, stream=True),
            lambda raw: b'"content"' in raw.read().split(b"\r\n\r\n", 1)[-1].replace(b'"content":""', b""),
        )
        stages["after"] = {
            "status": httpx.post(
                server.base_url + "/v1/chat/completions", json=chat("hi"), timeout=60
            ).status_code
        }
    finally:
        origin.close()
    violations = {}
    for name, s in stages.items():
        if name != "after" and (not s["reached"] or s["freed_s"] is None):
            violations[f"{name}: {'not freed' if s['reached'] else 'not reached'}"] = 1
    if stages["after"]["status"] != 200:
        violations["a request after the disconnects failed"] = 1
    bounds = {
        f"{name}_freed_s": bound(s["freed_s"], FREE_LIMIT_S, "s")
        for name, s in stages.items()
        if name != "after"
    }
    return {
        "stages": stages,
        "free_limit_s": FREE_LIMIT_S,
        "violations": violations,
        "bounds": bounds,
        "passed": not violations and not broken(bounds),
    }


DISCONNECT_FLAGS = (
    "--media-workers",
    "2",
    "--allow-http-media",
    "--allow-loopback-media",
    "--max-num-seqs",
    "1",
    "--max-num-batched-tokens",
    "16",
)


def run(model: str, logs: Path) -> dict:
    from bench.stress import process_faults  # it builds on this module's helpers

    results = {}
    server = start_server(model, logs, "--media-workers", "2", name="faults-decoder")
    try:
        results["decoder_kill"] = decoder_kill(server)
    finally:
        stop_server(server)
    server = start_server(model, logs, *DISCONNECT_FLAGS, name="faults-disconnect")
    try:
        results["disconnects"] = disconnects(server)
    finally:
        stop_server(server)
    results["sigterm"] = process_faults.sigterm(
        start_server(model, logs, *process_faults.SIGTERM_FLAGS, name="faults-sigterm")
    )
    server = start_server(
        model, logs, *process_faults.STALL_FLAGS, module=process_faults.LAUNCHER, name="faults-stall"
    )
    try:
        results["stall"] = process_faults.stall(server)
    finally:
        stop_server(server)
    return {
        **results,
        "violations": {n: 1 for n, r in results.items() if not r["passed"]},
        "bounds": {f"{n}.{k}": b for n, r in results.items() for k, b in r.get("bounds", {}).items()},
        "passed": all(r["passed"] for r in results.values()),
    }
