"""Real `llava-serve serve` processes on free loopback ports, a counting media origin, and helpers.

Servers shared by several modules are session-scoped and their modules share an xdist group
(`--dist loadgroup`), so each starts once.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from model_runtime.checkpoint_tools import make_demo
from testkit.origin import Origin
from testkit.processes import descendants, rss_bytes

API_KEYS = ("key-one", "key-two")


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log_path: str

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0,
                             timeout=kwargs.pop("timeout", 60), **kwargs)

    def metric(self, name: str, headers: dict | None = None) -> float:
        """The summed value of one series in /metrics (all label sets)."""
        text = httpx.get(self.base_url + "/metrics", headers=headers, timeout=5).text
        values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return sum(float(v) for v in values)

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def descendants(self) -> set[int]:
        """The server's processes below it: its decoder pool among them (a replaced decoder is a new pid)."""
        return set(descendants(self.process.pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, tmp_path, *extra: str, timeout: float = 120.0) -> ServerProcess:
    """Start a server and wait until /ready says so (the model loads after the port opens)."""
    port = free_port()
    log_path = str(tmp_path / f"server-{port}.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--model", model, "--host", "127.0.0.1",
             "--port", str(port), "--served-model-name", "tiny", "--media-workers", "1", *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become ready in {timeout}s:\n{server.log()}")


def stop_server(server: ServerProcess) -> int | None:
    if server.process.poll() is None:
        server.process.terminate()
    try:
        return server.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return None


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    s = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server"))
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def api_server(tiny_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the API-surface modules (completions, tokenize, messages, responses): their
    modules share the xdist group "api", so it starts once."""
    folder = tmp_path_factory.mktemp("api")
    s = start_server(tiny_checkpoint, folder, "--max-n", "4", "--data-dir", str(folder / "data"))
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def tiny_av_checkpoint(tmp_path_factory) -> str:
    """The tiny demo model with its audio tower (input_audio, audio_url, use_audio)."""
    return str(make_demo("tiny", tmp_path_factory.mktemp("ckpt-av") / "tiny-av", seed=0, audio=True))


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def local_server(tiny_av_checkpoint, media_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """For local use: http and loopback origins allowed, file:// under media_dir, small limits for tests."""
    s = start_server(tiny_av_checkpoint, tmp_path_factory.mktemp("local"),
                     "--allow-http-media", "--allow-loopback-media", "--allowed-local-media-path", str(media_dir),
                     "--max-request-body-mb", "4", "--max-video-seconds", "20", "--max-n", "4")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def strict_server(tiny_av_checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    """Production defaults but plain http (so the address checks, not the scheme, refuse), with API keys."""
    keys = [arg for key in API_KEYS for arg in ("--api-key", key)]
    s = start_server(tiny_av_checkpoint, tmp_path_factory.mktemp("strict"), "--allow-http-media", *keys)
    yield s
    stop_server(s)
