"""One greedy conversation (a system prompt, an image, a tool call and its result) through chat,
responses and messages with the official clients: the same prompt token count, the same output
tokens and text; and every generation route behind the same early 429 table."""

from __future__ import annotations

import base64
import io
import json

import anthropic
import openai
import pytest

from server.endpoints import GENERATION
from tests.conftest import random_image

pytestmark = pytest.mark.xdist_group("api")

SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
          "additionalProperties": False}
ARGUMENTS = {"city": "Oslo"}
MAX_TOKENS = 6


def png() -> bytes:
    buf = io.BytesIO()
    random_image(72, 40, seed=9).save(buf, format="PNG")
    return buf.getvalue()


def data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png()).decode()


def through_chat(client: openai.OpenAI):
    r = client.chat.completions.create(
        model="tiny", max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "description": "Forecast",
                                                 "parameters": SCHEMA}}],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url()}},
                                               {"type": "text", "text": "Weather here?"}]},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": json.dumps(ARGUMENTS)}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    tokens = [t.token for t in r.choices[0].logprobs.content]
    return r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].message.content, tokens


def through_responses(client: openai.OpenAI):
    r = client.responses.create(
        model="tiny", max_output_tokens=MAX_TOKENS, temperature=0, instructions="Be brief.", store=False,
        include=["message.output_text.logprobs"],
        tools=[{"type": "function", "name": "get_weather", "description": "Forecast", "parameters": SCHEMA}],
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": data_url()},
                                            {"type": "input_text", "text": "Weather here?"}]},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                "arguments": json.dumps(ARGUMENTS)},
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    tokens = [t.token for t in r.output[0].content[0].logprobs]
    return r.usage.input_tokens, r.usage.output_tokens, r.output_text, tokens


def through_messages(client: anthropic.Anthropic):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png()).decode()}}
    r = client.messages.create(
        model="tiny", max_tokens=MAX_TOKENS, extra_body={"temperature": 0}, system="Be brief.",
        tools=[{"name": "get_weather", "description": "Forecast", "input_schema": SCHEMA}],
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "Weather here?"}]},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                                     "input": ARGUMENTS}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                                "content": "sunny"}]}])
    return r.usage.input_tokens, r.usage.output_tokens, r.content[0].text


def test_one_conversation_through_three_apis_is_the_same_generation(api_server):
    openai_client = api_server.client()
    anthropic_client = anthropic.Anthropic(base_url=api_server.base_url, api_key="unused", max_retries=0)
    chat = through_chat(openai_client)
    responses = through_responses(openai_client)
    messages = through_messages(anthropic_client)
    assert chat == responses, (chat, responses)
    assert messages == chat[:3], (messages, chat)
    assert chat[1] == MAX_TOKENS and chat[3] and "".join(chat[3]) == chat[2]


def test_every_generation_route_is_refused_early_while_the_queue_is_full():
    from server.app import create_app
    from server.config import ServerConfig
    from server.middleware import EarlyRefusal

    app = create_app(ServerConfig(model="tiny", served_model_name="tiny", media_workers=1))
    early = [m for m in app.user_middleware if m.cls is EarlyRefusal]
    assert len(early) == 1 and early[0].kwargs["paths"] == frozenset(GENERATION)
    assert set(GENERATION) == {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
