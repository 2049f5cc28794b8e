"""Tool calling through the real app on the tiny model: required and named calls under a grammar,
auto parsing, streamed deltas that reassemble to the whole answer, history with calls and results;
and the answer parser on its own, fed in every split."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from server.protocol import ChatCompletionRequest
from server.tools import CallParser, plan_tools
from tests.server.test_app import assert_error

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 5}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def body(messages=None, **kw):
    kw.setdefault("max_tokens", 150)
    kw.setdefault("temperature", 0)
    return {
        "model": "tiny",
        "messages": messages or [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": TOOLS,
        **kw,
    }


def streamed(client, payload) -> dict:
    """The streamed answer reassembled as a client does: content joined, calls by index."""
    content, calls, reason = [], {}, None
    with client.stream("POST", "/v1/chat/completions", json={**payload, "stream": True}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                content.append(delta.get("content") or "")
                for d in delta.get("tool_calls") or []:
                    call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
                    if d.get("id"):
                        call["id"], call["name"] = d["id"], d["function"]["name"]
                    call["arguments"] += d["function"].get("arguments") or ""
                reason = choice["finish_reason"] or reason
    return {"content": "".join(content), "calls": [calls[i] for i in sorted(calls)], "finish_reason": reason}


def check_calls(calls: list[dict]) -> None:
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_required_gives_valid_calls_and_the_stream_reassembles_to_them(client):
    for kw in ({"parallel_tool_calls": False}, {"temperature": 1.0, "seed": 2, "parallel_tool_calls": False}):
        r = client.post("/v1/chat/completions", json=body(tool_choice="required", **kw))
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        assert choice["message"]["content"] is None and len(choice["message"]["tool_calls"]) == 1
        check_calls(choice["message"]["tool_calls"])
        s = streamed(client, body(tool_choice="required", **kw))
        assert s["finish_reason"] == "tool_calls" and s["content"] == ""
        whole = choice["message"]["tool_calls"]
        assert [(c["name"], c["arguments"]) for c in s["calls"]] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in whole
        ]


def test_named_function_is_the_one_called(client):
    r = client.post(
        "/v1/chat/completions",
        json=body(
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            parallel_tool_calls=False,
            n=2,
            temperature=1.0,
            seed=7,
        ),
    )
    for choice in r.json()["choices"]:
        assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"]
        check_calls(choice["message"]["tool_calls"])


def test_a_named_function_is_called_exactly_once_whatever_parallel_tool_calls_says(client):
    """The grammar of a named choice once allowed `call (separator call)*` unless parallel_tool_calls
    was false, so a default request (parallel unset) could answer with two calls of the function."""
    named = {"type": "function", "function": {"name": "get_time"}}
    for kw in ({}, {"parallel_tool_calls": True}, {"parallel_tool_calls": None}):
        plan = plan_tools(ChatCompletionRequest.model_validate(body(tool_choice=named, **kw)))
        assert plan.grammar is not None and "call)*" not in plan.grammar.source, kw
    assert "call)*" in plan_tools(ChatCompletionRequest.model_validate(body(tool_choice="required"))).grammar.source
    for seed in range(4):
        r = client.post("/v1/chat/completions", json=body(tool_choice=named, temperature=1.0, seed=seed, n=2))
        for choice in r.json()["choices"]:
            assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"], choice
            check_calls(choice["message"]["tool_calls"])
        s = streamed(client, body(tool_choice=named, temperature=1.0, seed=seed))
        assert [c["name"] for c in s["calls"]] == ["get_time"] and s["finish_reason"] == "tool_calls"


def test_auto_and_none_leave_free_text_of_a_model_that_calls_nothing(client):
    auto = client.post("/v1/chat/completions", json=body(max_tokens=6)).json()["choices"][0]
    assert auto["finish_reason"] == "length" and auto["message"]["tool_calls"] is None
    none = client.post("/v1/chat/completions", json=body(max_tokens=6, tool_choice="none")).json()
    plain = client.post("/v1/chat/completions", json={**body(max_tokens=6), "tools": None}).json()
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] < auto_prompt_tokens(client)


def auto_prompt_tokens(client) -> int:
    return client.post("/v1/chat/completions", json=body(max_tokens=1)).json()["usage"]["prompt_tokens"]


def test_history_with_calls_and_results(client):
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 24 C"},
    ]
    r = client.post("/v1/chat/completions", json=body(messages, max_tokens=4))
    assert r.status_code == 200, r.text
    short = client.post("/v1/chat/completions", json=body(messages[:1], max_tokens=4)).json()
    assert r.json()["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"]
    bad = [*messages[:2], {"role": "tool", "content": "x"}]
    assert_error(
        client.post("/v1/chat/completions", json=body(bad)),
        400,
        "invalid_request",
        "messages[2].tool_call_id",
    )


def test_bad_tool_requests(client):
    post = lambda **kw: client.post("/v1/chat/completions", json=body(**kw))  # noqa: E731
    assert_error(
        post(tool_choice={"type": "function", "function": {"name": "nope"}}),
        400,
        "invalid_request",
        "tool_choice.function.name",
    )
    assert_error(
        client.post("/v1/chat/completions", json={**body(), "tools": None, "tool_choice": "required"}),
        400,
        "invalid_request",
        "tool_choice",
    )
    assert_error(post(response_format={"type": "json_object"}), 400, "invalid_request", "response_format")
    r = post(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}],
        tool_choice="required",
    )
    assert_error(r, 400, "invalid_request", "tools")
    assert_error(post(tools=[{"type": "function", "function": {"name": "bad name"}}]), 400, "invalid_request")


ANSWERS = [
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
    "plain text with a < and <tool but no call",
    '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call> and more',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os',
    "trailing space   \n",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_parser_gives_the_same_events_in_any_split(answer):
    whole = CallParser(frozenset(SCHEMAS))
    events = whole.feed(answer) + whole.finish()
    content = "".join(e.text for e in events if e.kind == "content")
    for seed in range(20):
        rng = random.Random(seed)
        parser, pieces, i = CallParser(frozenset(SCHEMAS)), [], 0
        while i < len(answer):
            n = rng.randint(1, 5)
            pieces += parser.feed(answer[i : i + n])
            i += n
        pieces += parser.finish()
        assert "".join(e.text for e in pieces if e.kind == "content") == content
        assert [(c["name"], c["arguments"]) for c in parser.calls] == [
            (c["name"], c["arguments"]) for c in whole.calls
        ]
        for k, call in enumerate(parser.calls):
            assert (
                "".join(e.text for e in pieces if e.kind == "arguments" and e.index == k) == call["arguments"]
            )


def test_parser_reads_calls_and_keeps_other_text():
    parser = CallParser(frozenset(SCHEMAS))
    content = "".join(e.text for e in parser.feed(ANSWERS[0]) + parser.finish() if e.kind == "content")
    assert content == "Let me check."
    assert [(c["name"], json.loads(c["arguments"])) for c in parser.calls] == [
        ("get_weather", {"city": "Oslo", "days": 2}),
        ("get_time", {"zone": "CET"}),
    ]
    parser = CallParser(frozenset(SCHEMAS))
    content = "".join(e.text for e in parser.feed(ANSWERS[2]) + parser.finish() if e.kind == "content")
    assert content == ANSWERS[2] and parser.calls == []
