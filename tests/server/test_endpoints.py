"""What every API surface shares, through the real app: errors in the shape of the route's API, the
key by either header, and each response counted by endpoint."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from server.endpoints import GENERATION, endpoint_of, error_shape
from tests.conftest import wait_until_ready


def test_paths_map_to_a_bounded_set_of_endpoints():
    assert endpoint_of("/v1/chat/completions") == "chat" and endpoint_of("/v1/messages") == "messages"
    assert endpoint_of("/v1/responses/resp_1/input_items") == "responses_stored"
    assert endpoint_of("/v1/files/file-1/content") == "files" and endpoint_of("/v1/batches") == "batches"
    assert endpoint_of("/v1/whatever/" + "x" * 50) == "other" and endpoint_of("/metrics") == "probes"
    assert error_shape("/v1/messages/count_tokens") == "anthropic" and error_shape("/v1/messagesx") == "openai"


def test_errors_answer_in_the_shape_of_the_routes_api(client):
    r = client.get("/v1/messages/no-such-route")
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error" and r.json()["error"]["message"]
    r = client.get("/v1/no-such-route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_each_response_is_counted_by_endpoint_and_status(client):
    client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1,
                                              "messages": [{"role": "user", "content": "hi"}]})
    client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    text = client.get("/metrics").text
    assert re.search(r'llava_http_responses_total\{endpoint="chat",status="200"\} [1-9]', text)
    assert re.search(r'llava_http_responses_total\{endpoint="chat",status="404"\} [1-9]', text)
    assert re.search(r'llava_http_response_seconds_count\{endpoint="chat"\} [1-9]', text)


def test_the_key_comes_as_a_bearer_token_or_as_x_api_key(tiny_model):
    config = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, api_keys=("k1",))
    with TestClient(create_app(config, loaded=tiny_model)) as c:
        wait_until_ready(c)
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "k1"}).status_code == 200
        refused = c.get("/v1/models", headers={"x-api-key": "k2"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        anthropic = c.post("/v1/messages", headers={"x-api-key": "nope"}, json={})
        assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"


def test_a_body_over_the_limit_is_a_413_in_the_routes_shape(tiny_model):
    config = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, max_body_bytes=1024)
    with TestClient(create_app(config, loaded=tiny_model)) as c:
        wait_until_ready(c)
        big = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 4096}]}
        anthropic = c.post("/v1/messages", json=big)
        assert anthropic.status_code == 413 and anthropic.json()["error"]["type"] == "request_too_large"
        openai = c.post("/v1/responses", json={"model": "tiny", "input": "x" * 4096})
        assert openai.status_code == 413 and openai.json()["error"]["code"] == "request_too_large"


def test_a_full_queue_refuses_every_generation_route_early_in_its_shape(tiny_model):
    config = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, max_queued_requests=1)
    with TestClient(create_app(config, loaded=tiny_model)) as c:
        wait_until_ready(c)
        held = c.app.state.server.lifecycle.admit()  # the one waiting slot, taken
        try:
            for path in GENERATION:
                r = c.post(path, content=b"not even JSON", headers={"content-type": "application/json"})
                assert r.status_code == 429 and r.headers["retry-after"], path
                if error_shape(path) == "anthropic":
                    assert r.json()["error"]["type"] == "rate_limit_error", path
                else:
                    assert r.json()["error"]["code"] == "server_overloaded", path
            assert c.post("/tokenize", json={"prompt": "hi"}).status_code == 429  # counted: admitted too
        finally:
            held.close()
        assert c.post("/tokenize", json={"prompt": "hi"}).json()["count"] > 0
