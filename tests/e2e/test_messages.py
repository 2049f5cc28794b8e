"""End to end: the Anthropic Messages API with the official `anthropic` client against a real server:
create and stream (the client's `messages.stream()` and `text_stream`), images, tool use and
results, count_tokens, stop reasons, errors through the client's exception classes."""

from __future__ import annotations

import base64
import io

import anthropic
import httpx
import pytest

from tests.conftest import random_image

pytestmark = pytest.mark.xdist_group("api")

GREEDY = {"temperature": 0}  # the current SDK no longer types the sampling fields; the server reads them
WEATHER = {"name": "get_weather", "description": "Forecast",
           "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                            "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def client(api_server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api_server.base_url, api_key="unused", max_retries=0, timeout=60)


def image_block(seed: int = 1) -> dict:
    buf = io.BytesIO()
    random_image(60, 40, seed=seed).save(buf, format="PNG")
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": base64.b64encode(buf.getvalue()).decode()}}


def test_create_with_an_image_and_the_stream_gives_the_same_message(client):
    messages = [{"role": "user", "content": [image_block(), {"type": "text", "text": "What is it?"}]}]
    kw = {"model": "tiny", "max_tokens": 8, "extra_body": GREEDY, "system": "Be brief.", "messages": messages}
    whole = client.messages.create(**kw)
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 8
    assert whole.content[0].type == "text"
    counted = client.messages.count_tokens(model="tiny", system="Be brief.", messages=messages)
    assert counted.input_tokens == whole.usage.input_tokens
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_the_stream_has_anthropics_event_sequence(api_server):
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", api_server.base_url + "/v1/messages", json=body, timeout=60) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_a_named_tool_is_one_tool_use_and_its_result_goes_back(client):
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.messages.create(model="tiny", max_tokens=150, extra_body=GREEDY, tools=[WEATHER], messages=ask,
                                   tool_choice={"type": "tool", "name": "get_weather"})
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input["city"] in ("Paris", "Oslo")
    with client.messages.stream(model="tiny", max_tokens=150, extra_body=GREEDY, tools=[WEATHER], messages=ask,
                                tool_choice={"type": "any", "disable_parallel_tool_use": True}) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["tool_use"] and streamed.stop_reason == "tool_use"
    history = [*ask, {"role": "assistant", "content": [u.model_dump() for u in uses]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}]}]
    second = client.messages.create(model="tiny", max_tokens=3, extra_body=GREEDY, tools=[WEATHER], messages=history)
    assert second.usage.input_tokens > first.usage.input_tokens


def test_stop_sequences_and_cache_reads(client):
    kw = {"model": "tiny", "max_tokens": 12, "extra_body": GREEDY, "messages": [{"role": "user", "content": "abc"}]}
    free = client.messages.create(**kw).content[0].text
    assert len(free) > 3
    stop = free[2:4]
    stopped = client.messages.create(**kw, stop_sequences=[stop])
    if stop not in free[:2]:  # the stop string ends the answer where it first appears
        assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    again = client.messages.create(**kw)
    assert again.usage.cache_read_input_tokens > 0  # the same prompt: its blocks come from the prefix cache


def test_errors_come_in_anthropics_shape_through_the_clients_classes(client, api_server):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "thinking" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-9", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(api_server.base_url + "/v1/messages", json={"model": "tiny", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(api_server.base_url + "/v1/messages", json={"model": "tiny", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "document", "source": {}}]}]})
    assert r.status_code == 400 and "document" in r.json()["error"]["message"]
