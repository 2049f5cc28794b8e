"""Admission and shutdown on a real process: 429 before any media work, then SIGTERM drains.

One server (one batch row... two, one queue place): a full queue answers 429 with Retry-After, before
reading the body, and the origin of the refused request's image sees no hit; after SIGTERM /ready and new requests are 503 at
once, a short in-flight request completes, a long one ends with finish_reason "abort" and [DONE],
when the shutdown timeout runs out, and the process exits 0.
"""

from __future__ import annotations

import signal
import time

import httpx
import openai
import pytest

from testkit.media import image_bytes
from tests.e2e.conftest import start_server
from tests.e2e.sse import StreamReader

pytestmark = pytest.mark.xdist_group("drain")

SHUTDOWN_TIMEOUT = 5.0


def body(max_tokens: int, content="count") -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "ignore_eos": True}


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_queue_bound_then_sigterm_drain(tiny_checkpoint, tmp_path, origin):
    server = start_server(tiny_checkpoint, tmp_path, "--max-num-seqs", "2", "--max-queued-requests", "1",
                          "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--allow-http-media", "--allow-loopback-media")
    try:
        long_a = StreamReader(server.base_url, body(3000))
        assert long_a.first_token.wait(30)
        long_b = StreamReader(server.base_url, body(3000))
        assert long_b.first_token.wait(30)
        queued = StreamReader(server.base_url, body(3000))  # both rows busy: it waits
        wait_for(lambda: server.metric("llava_requests_waiting") == 1, 10)

        url = origin.add("/never.png", image_bytes(8, 8))
        with server.client() as client, pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}])
        assert e.value.code == "server_overloaded" and e.value.response.headers["retry-after"]
        assert origin.hits["/never.png"] == 0
        assert server.metric('llava_requests_rejected_total{reason="queue_full"}') == 1
        # refused before the body is read: a body that is not even JSON gets the 429, not a 400
        refused = httpx.post(server.base_url + "/v1/chat/completions", content=b"{not json" * 100_000,
                             headers={"content-type": "application/json"}, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "server_overloaded"

        long_b.close()
        queued.close()
        wait_for(lambda: server.metric("llava_requests_running") == 1, 10)
        short = StreamReader(server.base_url, body(6))
        assert short.first_token.wait(30)

        server.process.send_signal(signal.SIGTERM)
        ready = httpx.get(server.base_url + "/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        with server.client() as client, pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and e.value.code == "server_shutting_down"
        assert e.value.response.headers["retry-after"]

        assert short.join(SHUTDOWN_TIMEOUT + 10) and long_a.join(SHUTDOWN_TIMEOUT + 10)
        assert short.finish_reasons == ["length"] and short.ended_with_done
        assert long_a.finish_reasons == ["abort"] and long_a.ended_with_done
        assert server.process.wait(timeout=60) == 0  # the abort above shows the drain's timeout cut it short
    finally:
        if server.process.poll() is None:
            server.process.kill()


@pytest.mark.parametrize("breakage", ["missing weights", "no such folder", "kv cache too small"])
def test_a_model_that_cannot_load_exits_2_with_one_line(tiny_checkpoint, tmp_path, breakage):
    """While the model loads the port answers /health; when loading fails the process exits with
    status 2 and says why in one line, no traceback (the promise of docs/CHECKPOINTS.md)."""
    import shutil
    import subprocess
    import sys

    from tests.e2e.conftest import free_port

    model, extra = str(tmp_path / "broken"), []
    if breakage == "missing weights":
        shutil.copytree(tiny_checkpoint, model)
        for f in (tmp_path / "broken").glob("*.safetensors"):
            f.unlink()
    elif breakage == "kv cache too small":
        model, extra = tiny_checkpoint, ["--kv-cache-memory", "1KB"]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--model", model, "--host", "127.0.0.1", "--port",
         str(free_port()), "--media-workers", "1", *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("llava-serve serve: error: the model could not be loaded: "), done.stderr
    assert len(last) < 600
