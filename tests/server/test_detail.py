"""`detail` on images through the real app: low is the base view alone (one crop at the tower's size,
whatever the image's size), high and auto the checkpoint's aspect handling; the media report says
which, and chat, responses and tokenize count it alike."""

from __future__ import annotations

from tests.conftest import png_data_url, random_image

WIDE = png_data_url(random_image(900, 300, seed=4))


def chat(client, detail: str | None) -> dict:
    image = {"url": WIDE, **({"detail": detail} if detail else {})}
    r = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": image}, {"type": "text", "text": "?"}]}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_low_is_the_base_view_and_high_auto_are_the_checkpoints_way(client):
    low, high, auto, unset = chat(client, "low"), chat(client, "high"), chat(client, "auto"), chat(client, None)
    report = low["media"][0]
    assert report["processing"]["mode"] == "base_view" and report["processing"]["detail"] == "low"
    assert report["processing"]["crops"] == 1 and report["processing"]["grid"] is None
    parts = report["processing"]["token_parts"]
    assert report["tokens"] == parts["base"] + parts["newlines"] and parts["crops"] == []
    assert high["media"][0]["processing"]["mode"] == "anyres" and high["media"][0]["processing"]["crops"] > 1
    assert high["media"][0]["tokens"] > report["tokens"]
    assert high["usage"]["prompt_tokens"] == auto["usage"]["prompt_tokens"] == unset["usage"]["prompt_tokens"]
    assert auto["media"][0]["processing"]["detail"] == "auto" and auto["media"][0]["tokens"] == high["media"][0]["tokens"]
    assert low["usage"]["prompt_tokens_details"]["image_tokens"] == report["tokens"]
    small = png_data_url(random_image(30, 20, seed=4))  # any size: the base view is one crop
    r = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": small, "detail": "low"}}]}]})
    assert r.json()["media"][0]["tokens"] == report["tokens"]


def test_responses_and_tokenize_take_detail_too(client):
    r = client.post("/v1/responses", json={"model": "tiny", "max_output_tokens": 1, "store": False, "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": WIDE, "detail": "low"},
                                     {"type": "input_text", "text": "?"}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["media"][0]["processing"]["mode"] == "base_view"
    assert r.json()["usage"]["input_tokens"] == chat(client, "low")["usage"]["prompt_tokens"]
    counted = client.post("/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": WIDE, "detail": "low"}}, {"type": "text", "text": "?"}]}]})
    assert counted.json()["count"] == chat(client, "low")["usage"]["prompt_tokens"]
