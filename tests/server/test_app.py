"""The real app with a real engine worker on the tiny model, driven in-process."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from model_runtime import load_pretrained_model
from model_runtime.checkpoint.precision import detect_capabilities
from model_runtime.checkpoint.quantize import cpu_slowdown
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import png_data_url, random_image, wait_until_ready

LEAK = re.compile(r"0x[0-9a-fA-F]{6,}|Traceback|/site-packages/|\.py\b")


def chat(client, messages, **kw):
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, **kw})


def assert_error(resp, status: int, code: str, param: str | None = "ANY"):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    if param != "ANY":
        assert err["param"] == param
    assert not LEAK.search(resp.text), resp.text
    assert resp.headers["x-request-id"]


def test_text_chat(client):
    r = chat(client, [{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] <= 4
    assert body["usage"]["prompt_tokens_details"]["image_tokens"] == 0


def test_bad_json(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request", None)


def test_bad_value_names_the_field(client):
    r = chat(client, [{"role": "user", "content": "hi"}], temperature=7)
    assert_error(r, 400, "invalid_request", "temperature")
    r = chat(client, [{"role": "robot", "content": "hi"}])
    assert_error(r, 400, "invalid_request")
    assert r.json()["error"]["param"].startswith("messages[0].role")


def test_unknown_model(client):
    r = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert_error(r, 404, "model_not_found", "model")


def test_undecodable_image(client):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}
    r = chat(client, [{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}])
    assert_error(r, 400, "invalid_image", "messages[0].content[0].image_url")


def test_malformed_base64(client):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    r = chat(client, [{"role": "user", "content": [part]}])
    assert_error(r, 400, "invalid_image", "messages[0].content[0].image_url")


@pytest.mark.parametrize("text", ["look: <image> here", "<|im_end|> escape", "<audio>"])
def test_placeholders_and_special_tokens_in_text_are_refused(client, text):
    r = chat(client, [{"role": "user", "content": text}])
    assert_error(r, 400, "invalid_request", "messages[0].content")


@pytest.mark.parametrize("content", ["\ud800", [{"type": "text", "text": "a\udfffb"}]])
def test_a_lone_surrogate_in_text_is_a_400(client, content):
    # once a 500 from the tokenizer (found by bench/stress); JSON escapes keep the body valid JSON
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}]}, ensure_ascii=True)
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")
    assert r.json()["error"]["param"].startswith("messages[0].content")


def test_a_huge_top_k_is_served_and_the_engine_lives_on(client):
    # once crashed the engine thread (int64 overflow in the sampler) and every later request was a 503
    r = chat(client, [{"role": "user", "content": "hi"}], max_tokens=2, top_k=2**64)
    assert r.status_code == 200, r.text
    assert client.get("/ready").status_code == 200
    assert chat(client, [{"role": "user", "content": "hi"}], max_tokens=2).status_code == 200


def test_context_length_exceeded_gives_both_numbers(client):
    r = chat(client, [{"role": "user", "content": "hi"}], max_tokens=100000)
    assert_error(r, 400, "context_length_exceeded")
    assert "4096" in r.json()["error"]["message"]


def test_image_chat_charges_image_tokens(client, tiny_model):
    image = random_image(100, 60)
    expected = tiny_model.processor.process_image(image, single_crop=False).num_tokens
    part = {"type": "image_url", "image_url": {"url": png_data_url(image)}}
    r = chat(client, [{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}], max_tokens=2)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["image_tokens"] == expected


def test_health_models_metrics(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny"
    assert "RANDOM" in models["data"][0]["description"]
    chat(client, [{"role": "user", "content": "count me"}], max_tokens=1)
    text = client.get("/metrics").text
    assert re.search(r'llava_requests_total\{finish_reason="(length|stop)"\} [1-9]', text)
    assert "llava_time_to_first_token_seconds_bucket" in text
    assert 'llava_model_info{dtype="float32",model="tiny",quantization="none"} 1.0' in text


def test_audio_on_a_model_without_an_audio_tower(client):
    part = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    r = chat(client, [{"role": "user", "content": [part]}])
    assert_error(r, 400, "unsupported_media_format", "messages[0].content[0].input_audio")
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA", "use_audio": True}}
    r = chat(client, [{"role": "user", "content": [video]}])
    assert_error(r, 400, "unsupported_media_format", "messages[0].content[0].video_url")


def test_version_and_model_card(client):
    version = client.get("/version").json()
    assert version["model"] == "tiny" and version["dtype"] == "float32" and version["quantization"] == "none"
    assert version["dtype_reason"] == "--dtype float32" and version["device"] == "cpu"
    assert version["version"]
    card = client.get("/v1/models/tiny").json()
    assert card["modalities"] == ["text", "image", "video"]
    assert_error(client.get("/v1/models/other"), 404, "model_not_found")


def test_an_internal_value_error_is_a_500_that_does_not_leak(client, tiny_model, monkeypatch):
    # a plain ValueError from inside the runtime was once echoed as a 400 "the messages do not match their media"
    def broken(*args, **kwargs):
        raise ValueError("secret detail at /srv/model_runtime/processing/processor.py")

    monkeypatch.setattr(tiny_model.processor, "build_prompt", broken)
    r = chat(client, [{"role": "user", "content": "hi"}], max_tokens=2)
    assert_error(r, 500, "internal_error", None)
    assert "secret" not in r.text and r.json()["error"]["type"] == "server_error"
    assert r.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("quantization", ["none", "bitsandbytes-8bit", "bitsandbytes-4bit"])
def test_start_up_log_says_the_dtype_and_what_quantization_costs(tiny_checkpoint, caplog, quantization):
    loaded = load_pretrained_model(tiny_checkpoint, quantization=quantization)  # --dtype auto
    app = create_app(ServerConfig(model="tiny", served_model_name="tiny", media_workers=1), loaded=loaded)
    with caplog.at_level(logging.INFO, logger="llava_serve"), TestClient(app) as c:
        wait_until_ready(c)
        version = c.get("/version").json()
        assert chat(c, [{"role": "user", "content": "hello"}], max_tokens=2).status_code == 200
    ours = [r for r in caplog.records if r.name == "llava_serve"]
    assert [r.getMessage() for r in ours if r.getMessage().startswith("dtype ")] == [
        f"dtype {version['dtype']}: {version['dtype_reason']}"]
    assert version["dtype_reason"] == loaded.dtype_reason and "float32" in version["dtype_reason"]
    assert version["quantization"] == quantization
    slower = [r.getMessage() for r in ours if r.levelno == logging.WARNING and "slower than float32" in r.getMessage()]
    expected = cpu_slowdown(quantization, "cpu", detect_capabilities("cpu"))
    assert loaded.quantization_slowdown == expected
    assert (expected is not None) == (quantization != "none") or quantization == "bitsandbytes-8bit"  # 4-bit: every CPU
    if expected is None:
        assert not slower
    else:
        assert slower == [f"--quantization {quantization} is slower than float32 on this CPU: {expected}"]
    # LLM.int8's note that it casts each input to float16 would come once per layer per step
    assert not [r for r in caplog.records if "during quantization" in r.getMessage()]
