"""A stream that fails midway ends in its own API's failure event: `response.failed` on /v1/responses,
Anthropic's `error` event on /v1/messages. The real app and engine in-process; the failure is the
engine's, injected inside the real model (testkit/faults.py) for one request at its first decode
step, so the stream has already begun (and its first token gone out) when it fails.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from testkit.faults import FaultInjection
from testkit.media import assert_no_leak
from tests.server.test_lifecycle import inject_faults, wait_ready

CONFIG = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1)
POISON = "poison"  # the x-request-id of the failing request; its engine id is the API's prefix + this
PROMPT = "Tell me a long story."


@pytest.fixture(scope="module")
def client(tiny_model):
    app = create_app(CONFIG, loaded=tiny_model)
    with TestClient(app) as client:
        wait_ready(client)
        faults = FaultInjection(poison_request_ids=frozenset({"resp-" + POISON, "msg_" + POISON}),
                                poison_phases=frozenset({"decode"}))  # the prefill and its first token pass
        inject_faults(app, faults)
        yield client


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE event."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def post_stream(client: TestClient, path: str, body: dict) -> list[tuple[str, dict]]:
    r = client.post(path, json={**body, "stream": True}, headers={"x-request-id": POISON})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert_no_leak(r.text)
    return events(r.text)


RESPONSES_BODY = {"model": "tiny", "input": PROMPT, "max_output_tokens": 16, "temperature": 0}
MESSAGES_BODY = {"model": "tiny", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]}
GREEDY = {"temperature": 0}  # read from the body; the current anthropic SDK no longer types it


def test_a_responses_stream_that_fails_midway_ends_in_response_failed(client):
    got = post_stream(client, "/v1/responses", RESPONSES_BODY)
    kinds = [kind for kind, _ in got]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds[:-1]  # midway: text went out before the failure
    assert kinds[-1] == "response.failed" and kinds.count("response.failed") == 1
    assert not {"response.completed", "response.incomplete"} & set(kinds)
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))
    assert all(data["type"] == kind for kind, data in got)
    failed = got[-1][1]["response"]
    assert failed["id"] == got[0][1]["response"]["id"] and failed["status"] == "failed"
    assert failed["error"]["code"] == "internal_error" and failed["error"]["message"]
    assert set(failed["error"]) == {"code", "message"}  # OpenAI's ResponseError

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    streamed = list(sdk.responses.create(**RESPONSES_BODY, stream=True, extra_headers={"x-request-id": POISON}))
    assert streamed[-1].type == "response.failed"  # the client reads it as its own event type
    assert streamed[-1].response.status == "failed" and streamed[-1].response.error.code == "internal_error"

    ok = sdk.responses.create(**RESPONSES_BODY)  # another request is served as before
    assert ok.status in ("completed", "incomplete") and ok.error is None


def test_a_messages_stream_that_fails_midway_ends_in_an_error_event(client):
    got = post_stream(client, "/v1/messages", {**MESSAGES_BODY, **GREEDY})
    kinds = [kind for kind, _ in got]
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds[:-1]  # midway: text went out before the failure
    assert kinds[-1] == "error" and kinds.count("error") == 1
    assert "message_stop" not in kinds and "message_delta" not in kinds
    assert all(data["type"] == kind for kind, data in got)
    assert got[-1][1] == {"type": "error", "error": {"type": "api_error", "message": got[-1][1]["error"]["message"]}}
    assert got[-1][1]["error"]["message"]

    sdk = anthropic.Anthropic(base_url="http://testserver", api_key="x", http_client=client, max_retries=0)
    stream = sdk.messages.stream(**MESSAGES_BODY, extra_body=GREEDY, extra_headers={"x-request-id": POISON})
    with pytest.raises(anthropic.APIStatusError) as e, stream as events_in:  # raised on Anthropic's error event
        list(events_in.text_stream)
    assert e.value.body["error"]["type"] == "api_error"

    ok = sdk.messages.create(**MESSAGES_BODY, extra_body=GREEDY)  # another request is served as before
    assert ok.stop_reason in ("end_turn", "max_tokens")
