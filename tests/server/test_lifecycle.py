"""Readiness and failure paths of the real app, in-process: loading, a stalled or dead engine
worker (fake clock, the edge), and engine faults (tests/faults.py, installed once the engine runs)."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from testkit.faults import FaultInjection, inject
from testkit.media import assert_no_leak

CONFIG = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, ready_stall_seconds=5)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    """The model is handed to the engine in the background; /ready says when it serves."""
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.02)


def inject_faults(app, faults: FaultInjection) -> None:
    """Once ready and before any request: the engine has run no step yet, so steps count from 1."""
    inject(app.state.server.runtime.worker.engine, faults)


def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def test_ready_only_after_loading(tiny_model):
    release = threading.Event()

    def load():
        release.wait(30)
        return tiny_model

    with TestClient(create_app(CONFIG, load=load)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "loading" and ready.headers["retry-after"]
        with pytest.raises(openai.InternalServerError) as e:
            sdk(client).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and e.value.code == "not_ready"
        assert e.value.response.headers["retry-after"]
        release.set()
        wait_ready(client)
        assert client.get("/ready").json() == {"status": "ready"}


def test_stalled_and_dead_worker(tiny_model):
    now = [0.0]

    def clock() -> float:
        return time.time() + now[0]

    app = create_app(CONFIG, loaded=tiny_model, clock=clock)
    with TestClient(app) as client:
        wait_ready(client)
        now[0] = 60.0  # the heartbeat is now a minute old
        assert client.get("/ready").json()["reason"] == "engine worker stalled"
        assert client.get("/health").status_code == 200  # alive, just not ready
        now[0] = 0.0
        assert client.get("/ready").status_code == 200
        app.state.server.lifecycle.worker.stop()
        assert client.get("/health").status_code == 503
        assert client.get("/ready").json()["reason"] == "engine worker stopped"
        with pytest.raises(openai.InternalServerError) as e:
            sdk(client).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and e.value.code == "not_ready"


def test_engine_fault_on_one_request_is_a_500_that_says_do_not_retry(tiny_model):
    app = create_app(CONFIG, loaded=tiny_model)
    with TestClient(app) as client:
        wait_ready(client)
        inject_faults(app, FaultInjection(poison_request_ids=frozenset({"chatcmpl-poison"})))
        client_sdk = sdk(client)
        with pytest.raises(openai.InternalServerError) as e:
            client_sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, extra_headers={"x-request-id": "poison"})
        assert e.value.status_code == 500 and e.value.code == "internal_error"
        assert e.value.response.headers["x-should-retry"] == "false"
        assert_no_leak(e.value.response.text)
        stream = client.post("/v1/chat/completions", headers={"x-request-id": "poison"}, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True})
        events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
        assert '"code": "internal_error"' in events[-2] and events[-1] == "data: [DONE]"
        ok = client_sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2)
        assert ok.choices[0].finish_reason in ("length", "stop")


def test_a_dead_engine_asks_the_process_to_exit(tiny_model):
    app = create_app(CONFIG, loaded=tiny_model)
    exits = threading.Event()
    app.state.server.request_exit = exits.set
    with TestClient(app) as client:
        wait_ready(client)
        inject_faults(app, FaultInjection(fatal_at_step=1))
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert exits.wait(5)
        assert client.get("/health").status_code == 503
        assert app.state.server.lifecycle.phase.value == "failed"
