"""A real `llava-serve serve` process for the stress harness: start, probe, read /metrics, sample the OS.

The server is started exactly as an operator would (a subprocess on a free 127.0.0.1 port, its log
in the output folder) and waited on until `/ready` says 200. `sample()` reads what the soak and
the leak checks watch from /proc: resident memory of the server and of all its descendants,
open file descriptors, threads and descendant processes. Knows nothing of the traffic it is sent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from server.endpoints import error_shape
from server.errors import ANTHROPIC_ERROR_TYPES, ERROR_TYPES
from testkit.media import LEAK
from testkit.processes import children, cmdline, descendants, rss_bytes

MODEL_NAME = "stress"
# gauges that must read 0 once no request is in flight (a leaked slot, ticket or KV block shows here)
IDLE_GAUGES = (
    "llava_requests_running",
    "llava_requests_waiting",
    "llava_batch_size",
    'llava_kv_cache_blocks{state="used"}',
)
_SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", re.M)


def demo_model(size: str, folder: Path) -> str:
    """The demo checkpoint of `size` with its audio tower, built once under `folder`."""
    from model_runtime.checkpoint_tools import make_demo

    path = folder / f"{size}-av"
    if not (path / "config.json").exists():
        make_demo(size, path, seed=0, audio=True)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sample:
    t: float  # seconds since the server was ready
    rss_bytes: int  # the server process
    rss_total_bytes: int  # the server and every descendant (decoder processes, forkserver)
    num_fds: int  # open file descriptors of the server process
    num_threads: int  # threads of the server process
    num_processes: int  # descendants of the server process


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    ready_at: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Every series of /metrics: `name` summed over its label sets, and `name{labels}` itself."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for name, labels, value in _SERIES.findall(text):
            out[name] = out.get(name, 0.0) + float(value)
            if labels:
                out[name + labels] = float(value)
        return out

    def idle_gauges(self, settle_s: float = 10.0) -> dict[str, float]:
        """The gauges that must be 0 when idle, read until they are (or `settle_s` has passed)."""
        deadline = time.monotonic() + settle_s
        while True:
            values = self.metrics()
            gauges = {g: values.get(g, 0.0) for g in IDLE_GAUGES}
            if not any(gauges.values()) or time.monotonic() > deadline:
                return gauges
            time.sleep(0.2)

    def descendants(self) -> list[int]:
        return descendants(self.pid)

    def decoder_pids(self) -> list[int]:
        """The media decoder processes: the forkserver's children (the forkserver is the server's child)."""
        out = []
        for child in children(self.pid):
            if b"forkserver" in cmdline(child):
                out.extend(children(child))
        return out

    def sample(self) -> Sample:
        pids = [self.pid, *self.descendants()]
        return Sample(
            t=round(time.monotonic() - self.ready_at, 1),
            rss_bytes=rss_bytes(self.pid),
            rss_total_bytes=sum(rss_bytes(p) for p in pids),
            num_fds=len(os.listdir(f"/proc/{self.pid}/fd")),
            num_threads=len(os.listdir(f"/proc/{self.pid}/task")),
            num_processes=len(pids) - 1,
        )

    def ready_status(self) -> int:
        try:
            return httpx.get(self.base_url + "/ready", timeout=2).status_code
        except httpx.HTTPError:
            return 0


def start_server(
    model: str,
    out: Path,
    *extra: str,
    module: str = "server.cli",
    timeout: float = 180.0,
    name: str = "server",
) -> Server:
    """Start `python -m <module> serve` (the real CLI, or a launcher with the same flags) and wait for /ready."""
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{name}-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--dtype",
        "float32",
        *extra,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-3000:]}")
        if server.ready_status() == 200:
            server.ready_at = time.monotonic()
            return server
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{server.log()[-3000:]}")


def stop_server(server: Server, timeout: float = 40.0) -> int | None:
    """SIGTERM (the server drains), then the exit status; SIGKILL if it does not exit in time."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        return None


def error_shape_problem(status: int, body: bytes, path: str = "") -> str | None:
    """Why an error response is not the shape of server/errors.py for its route's API (None when it is):
    OpenAI's, or Anthropic's on /v1/messages (server/endpoints.py)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if error_shape(path) == "anthropic":
        return anthropic_shape_problem(status, payload)
    if not isinstance(payload, dict) or set(payload) != {"error"} or not isinstance(payload["error"], dict):
        return "body is not {'error': {...}}"
    error = payload["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"error keys {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "message is not a non-empty string"
    if error["type"] != ERROR_TYPES.get(status, "invalid_request_error"):
        return f"type {error['type']!r} for status {status}"
    if not isinstance(error["code"], str) or not (error["param"] is None or isinstance(error["param"], str)):
        return "code is not a string or param is not a string/null"
    if LEAK.search(error["message"]):
        return "message leaks an address, path or traceback"
    return None


def anthropic_shape_problem(status: int, payload: object) -> str | None:
    if not isinstance(payload, dict) or set(payload) != {"type", "error"} or payload["type"] != "error":
        return "body is not {'type': 'error', 'error': {...}}"
    error = payload["error"]
    if not isinstance(error, dict) or set(error) != {"type", "message"}:
        return "error keys are not type, message"
    if error["type"] != ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error"):
        return f"type {error['type']!r} for status {status}"
    if not isinstance(error["message"], str) or not error["message"] or LEAK.search(error["message"]):
        return "message is empty or leaks an address, path or traceback"
    return None


def as_dict(sample: Sample) -> dict:
    return asdict(sample)
