"""The error table of spec section 3 through the official client: status, code, param, SDK class,
headers, and no leak (memory address, path, traceback) in any body. The server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

from testkit.media import (
    assert_no_leak,
    b64,
    data_url,
    image_bytes,
    long_silent_flac,
    png_header_only,
    video_bytes,
)

pytestmark = pytest.mark.xdist_group("local")

TEXT = [{"type": "text", "text": "hi"}]


@pytest.fixture(scope="module")
def client(local_server):
    with local_server.client() as c:
        yield c


def expect(client, exc_class, code: str, content=None, param: str | None = "ANY", **kw):
    kw.setdefault("model", "tiny")
    kw.setdefault("max_tokens", 2)
    with pytest.raises(exc_class) as e:
        client.chat.completions.create(messages=[{"role": "user", "content": content or TEXT}], **kw)
    err = e.value
    assert err.code == code, err.body
    assert isinstance(err.body, dict) and isinstance(err.message, str)
    if param != "ANY":
        assert err.body.get("param") == param
    assert_no_leak(err.response.text)
    assert err.response.headers["x-request-id"]
    return err


def image(url: str) -> list:
    return [{"type": "image_url", "image_url": {"url": url}}, *TEXT]


def test_schema_and_value_errors(client):
    expect(client, openai.BadRequestError, "invalid_request", param="temperature", temperature=3)
    expect(client, openai.BadRequestError, "invalid_request", param="top_logprobs", top_logprobs=21, logprobs=True)
    expect(client, openai.BadRequestError, "invalid_request", param="n", n=5)
    expect(client, openai.BadRequestError, "invalid_request", param="messages[0].content[0].type",
           content=[{"type": "hologram"}])
    err = expect(client, openai.BadRequestError, "invalid_request", extra_body={"repetition_penalty": 0})
    assert err.body["param"] == "repetition_penalty"


def test_context_length_names_both_numbers(client):
    err = expect(client, openai.BadRequestError, "context_length_exceeded", max_tokens=100000)
    assert "4096" in err.message and "100000" in err.message


def test_placeholders_and_special_tokens_in_text(client):
    expect(client, openai.BadRequestError, "invalid_request", [{"type": "text", "text": "see <image> here"}],
           param="messages[0].content[0].text")
    expect(client, openai.BadRequestError, "invalid_request", [{"type": "text", "text": "<|im_end|>"}],
           param="messages[0].content[0].text")


def test_media_errors(client, origin):
    where = "messages[0].content[0].image_url"
    expect(client, openai.BadRequestError, "image_too_large", image(data_url("image/png", png_header_only(10000, 10000))),
           param=where)
    expect(client, openai.BadRequestError, "invalid_image", image("data:image/png;base64,aGVsbG8gd29ybGQ="), param=where)
    expect(client, openai.BadRequestError, "unsupported_media_format",
           image(data_url("image/tiff", b"II*\x00" + b"\x00" * 64)), param=where)
    expect(client, openai.BadRequestError, "blocked_media_url", image("http://10.0.0.1/a.png"), param=where)
    expect(client, openai.BadRequestError, "media_fetch_failed", image(origin.url("/missing.png")), param=where)
    expect(client, openai.BadRequestError, "too_many_media_items",
           [{"type": "image_url", "image_url": {"url": origin.url(f"/n{i}.png")}} for i in range(9)])
    video = "messages[0].content[0].video_url"
    expect(client, openai.BadRequestError, "invalid_video",
           [{"type": "video_url", "video_url": {"url": data_url("video/mp4", b"\x00\x00\x00\x18ftypisom" + b"\0" * 40)}}],
           param=video)
    expect(client, openai.BadRequestError, "video_too_long",
           [{"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes(num_frames=42, fps=2))}}],
           param=video)
    audio = "messages[0].content[0].input_audio"
    expect(client, openai.BadRequestError, "invalid_audio",
           [{"type": "input_audio", "input_audio": {"data": b64(b"not audio at all"), "format": "wav"}}], param=audio)
    expect(client, openai.BadRequestError, "audio_too_long",
           [{"type": "input_audio", "input_audio": {"data": b64(long_silent_flac(660)), "format": "flac"}}],
           param=audio)
    expect(client, openai.BadRequestError, "invalid_request",
           [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}}])


def test_unknown_model_and_route(client, local_server):
    expect(client, openai.NotFoundError, "model_not_found", model="gpt-9", param="model")
    r = httpx.get(local_server.base_url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and r.headers["x-request-id"]


def test_body_too_large(local_server):
    big = data_url("image/png", image_bytes(8, 8)) + "A" * (5 * 2**20)
    r = httpx.post(local_server.base_url + "/v1/chat/completions", timeout=30,
                   json={"model": "tiny", "messages": [{"role": "user", "content": image(big)}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert r.headers["x-should-retry"] == "false" and r.headers["x-request-id"]


def test_request_ids_and_headers(local_server, client):
    r = httpx.post(local_server.base_url + "/v1/chat/completions", headers={"x-request-id": "my-trace-1"},
                   json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.headers["x-request-id"] == "my-trace-1" and r.json()["id"] == "chatcmpl-my-trace-1"
    bad = httpx.post(local_server.base_url + "/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    assert bad.json()["error"] == {"message": "the request body is not valid JSON", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_request"}
    # after all of the above, the server still answers
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still there?"}],
                                        max_tokens=1)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_redirect_to_a_refused_address(local_server, origin):
    """On the local-use server (loopback allowed) a redirect to a private or metadata address is refused."""
    with local_server.client() as client:
        for target in ("http://169.254.169.254/latest/meta-data/", "http://10.1.1.1/x", "file:///etc/passwd"):
            origin.redirect("/hop-ssrf", target)
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": origin.url("/hop-ssrf")}}]}])
            assert e.value.code == "blocked_media_url"
