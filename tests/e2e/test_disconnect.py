"""A client that goes away frees its batch slot: streaming and non-streaming alike."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e.sse import StreamReader

pytestmark = pytest.mark.xdist_group("local")

LONG = {"model": "tiny", "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 3000,
        "ignore_eos": True}


def wait_for(predicate, timeout: float) -> None:
    """Until predicate() holds; fails after `timeout` (a hung test, not a slow machine: the time each
    stage takes to free its slot is a figure of `python -m bench.stress --parts faults`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_closing_a_stream_frees_the_slot(local_server):
    running = lambda: local_server.metric("llava_requests_running")  # noqa: E731
    aborted = local_server.metric('llava_requests_total{finish_reason="abort"}')
    reader = StreamReader(local_server.base_url, LONG)
    assert reader.first_token.wait(30) and reader.error is None
    wait_for(lambda: running() == 1, 5)
    reader.close()
    wait_for(lambda: running() == 0, 30)
    assert reader.join(30)
    assert local_server.metric('llava_requests_total{finish_reason="abort"}') == aborted + 1


def test_closing_a_non_streaming_call_frees_the_slot(local_server):
    running = lambda: local_server.metric("llava_requests_running")  # noqa: E731
    aborted = local_server.metric('llava_requests_total{finish_reason="abort"}')
    host, port = local_server.base_url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: running() == 1, 30)
    sock.close()
    wait_for(lambda: running() == 0, 30)
    assert local_server.metric("llava_requests_waiting") == 0
    wait_for(lambda: local_server.metric('llava_requests_total{finish_reason="abort"}') > aborted, 30)
    assert local_server.metric('llava_requests_total{finish_reason="abort"}') == aborted + 1  # counted once


def test_leaving_during_a_slow_fetch_cancels_it(local_server, origin):
    waiting = lambda: local_server.metric("llava_requests_waiting")  # noqa: E731
    timed_out = lambda: local_server.metric('llava_errors_total{code="media_fetch_failed"}')  # noqa: E731
    failed_before = timed_out()
    url = origin.add("/slow-origin.png", b"x" * 100, delay=120.0)
    body = json.dumps({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}).encode()
    host, port = local_server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: origin.hits["/slow-origin.png"] == 1 and waiting() == 1, 10)
    sock.close()
    wait_for(lambda: waiting() == 0, 30)
    assert timed_out() == failed_before  # the fetch was cancelled, not ended by its 10 s timeout
