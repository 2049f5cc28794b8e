"""End to end: the Responses API with the official openai client against a real server: create and
stream (the client's `responses.stream()`), text.format through `responses.parse`, function tools,
usage with cached tokens, stored and chained responses (GET, DELETE, input_items,
previous_response_id), errors through the client's exception classes."""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import png_data_url, random_image

pytestmark = pytest.mark.xdist_group("api")

WEATHER = {"type": "function", "name": "get_weather", "description": "Forecast",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                          "required": ["city"], "additionalProperties": False}}


class Point(BaseModel):
    x: int = Field(ge=0, le=9)
    y: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    return api_server.client()


def image_input(text: str, seed: int = 3) -> list[dict]:
    url = png_data_url(random_image(64, 48, seed=seed))
    return [{"role": "user", "content": [{"type": "input_image", "image_url": url},
                                         {"type": "input_text", "text": text}]}]


def test_create_and_stream_give_the_same_response(client):
    kw = {"model": "tiny", "input": image_input("What is it?"), "instructions": "Be brief.",
          "max_output_tokens": 8, "temperature": 0}
    whole = client.responses.create(**kw, store=False)
    assert whole.object == "response" and whole.status == "incomplete"
    assert whole.incomplete_details.reason == "max_output_tokens" and whole.usage.output_tokens == 8
    assert whole.output[0].type == "message" and whole.output_text
    with client.responses.stream(**kw, store=False) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert events[-1].type == "response.incomplete"  # get_final_response() wants response.completed
    final = events[-1].response
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == whole.output_text == final.output_text
    assert final.usage.input_tokens == whole.usage.input_tokens and final.status == "incomplete"


def test_the_stream_is_numbered_in_openais_order(api_server):
    body = {"model": "tiny", "input": "Once upon a time", "max_output_tokens": 8, "temperature": 0, "stream": True,
            "store": False}
    with httpx.stream("POST", api_server.base_url + "/v1/responses", json=body, timeout=60) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                          "response.content_part.added", "response.output_text.delta"]
    assert events[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                           "response.incomplete"]


def test_parse_with_a_pydantic_model(client):
    parsed = client.responses.parse(model="tiny", input="A point?", text_format=Point, max_output_tokens=40,
                                    temperature=0, store=False)
    assert isinstance(parsed.output_parsed, Point)


def test_a_named_function_is_one_call_and_its_output_goes_back(client):
    first = client.responses.create(model="tiny", input="Weather in Oslo?", tools=[WEATHER], max_output_tokens=150,
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and first.status == "completed"
    with client.responses.stream(model="tiny", input="Weather in Oslo?", tools=[WEATHER], max_output_tokens=150,
                                 tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
                                 store=False) as stream:
        streamed = stream.get_final_response()
    assert [(o.type, o.name, o.arguments) for o in streamed.output] == [("function_call", "get_weather",
                                                                         calls[0].arguments)]
    second = client.responses.create(model="tiny", previous_response_id=first.id, tools=[WEATHER], temperature=0,
                                     max_output_tokens=3, input=[{"type": "function_call_output",
                                                                  "call_id": calls[0].call_id, "output": "sunny"}])
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_stored_chained_and_deleted(client, api_server):
    first = client.responses.create(model="tiny", input=image_input("Describe it."), max_output_tokens=4,
                                    temperature=0)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    second = client.responses.create(model="tiny", previous_response_id=first.id, input="And now?",
                                     max_output_tokens=4, temperature=0)
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 16  # one partial block
    assert second.usage.input_tokens > first.usage.input_tokens
    other_key = httpx.get(f"{api_server.base_url}/v1/responses/nope")
    assert other_key.status_code == 404 and other_key.json()["error"]["code"] == "not_found"
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny", previous_response_id=second.id, input="x", max_output_tokens=2)
    unstored = client.responses.create(model="tiny", input="x", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_bad_responses_requests_are_400s_naming_the_field(client):
    cases = [({"background": True}, "background"), ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
             ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
             ({"temperature": 5}, "temperature"),
             ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
              "input[0].content[0].type")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(**{"model": "tiny", "input": "hi", "max_output_tokens": 2, **extra})
        assert e.value.body["param"] == param, (extra, e.value.body)
