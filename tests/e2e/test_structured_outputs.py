"""End to end: structured outputs and tool calls with the official openai client against a real server.

`client.chat.completions.parse` with a pydantic model, and `client.chat.completions.stream` with a
pydantic function tool (the client reassembles the streamed tool-call deltas and parses the
arguments), each with an image in the request; on the tiny random model, where only the grammar
makes the answers parse.
"""

from __future__ import annotations

from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import png_data_url, random_image


class Box(BaseModel):
    x: int = Field(ge=0, le=99)
    y: int = Field(ge=0, le=99)


class Reading(BaseModel):
    label: str = Field(max_length=8)
    kind: Literal["cat", "dog", "car"]
    confidence: float = Field(ge=0, le=1, multiple_of=0.01)
    boxes: list[Box] = Field(max_length=2)
    note: bool | None


class GetWeather(BaseModel):
    """The forecast of a city."""

    city: Literal["Paris", "Rome", "Oslo"]
    days: int = Field(ge=1, le=7)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.client()


def image_message(text: str) -> list[dict]:
    url = png_data_url(random_image(80, 50, seed=5))
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


def test_parse_with_a_pydantic_model_and_an_image(client):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        completion = client.chat.completions.parse(
            model="tiny",
            messages=image_message("What is in the image?"),
            response_format=Reading,
            max_tokens=150,
            **kw,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Reading)
        assert choice.message.parsed == Reading.model_validate_json(choice.message.content)
        assert completion.usage.prompt_tokens_details.image_tokens > 0


def test_a_schema_the_server_cannot_enforce_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"not": {"type": "null"}}},
            },
        )
    assert caught.value.body["param"] == "response_format.json_schema"


def test_streamed_tool_call_deltas_reassembled_by_the_client(client):
    tools = [openai.pydantic_function_tool(GetWeather)]
    request = dict(
        model="tiny",
        messages=image_message("Which city is this? Get its weather."),
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=100,
    )
    with client.chat.completions.stream(**request) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "GetWeather" and call.id.startswith("call_")
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert len(deltas) > 1  # the arguments came in pieces
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "tool_calls"
    assert whole.message.tool_calls[0].function.arguments == call.function.arguments


def test_a_conversation_that_answers_a_tool_call(client):
    tools = [openai.pydantic_function_tool(GetWeather)]
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, tools=tools, tool_choice="none", max_tokens=5, temperature=0
    )
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason in (
        "stop",
        "length",
    )
