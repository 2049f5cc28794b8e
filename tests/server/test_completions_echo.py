"""`echo` on /v1/completions with token ids outside the vocabulary: a 400 naming the prompt, as without
echo (found by the fuzz harness: the echo text was decoded before the ids were checked, a 500)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from tests.server.test_lifecycle import wait_ready

CONFIG = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1)


@pytest.mark.parametrize("bad", [-10567297, 2**40])
@pytest.mark.parametrize("echo", [True, False])
def test_ids_outside_the_vocabulary_are_a_400_with_or_without_echo(tiny_model, bad, echo):
    with TestClient(create_app(CONFIG, loaded=tiny_model)) as client:
        wait_ready(client)
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": [5, bad, 7], "echo": echo, "max_tokens": 2})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "prompt" and error["type"] == "invalid_request_error" and str(bad) in error["message"]
        ok = client.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7], "echo": echo, "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"].startswith(
            client.post("/detokenize", json={"model": "tiny", "tokens": [5, 6, 7]}).json()["prompt"] if echo else "")
