"""response_format, guided_*, logit_bias and refused OpenAI fields through the real app on the tiny model."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from model_runtime.engine.detokenizer import TokenTexts
from server.structured import UNSUPPORTED_FIELDS
from tests.conftest import png_data_url, random_image
from tests.server.test_app import assert_error

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 6},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
        "colour": {"enum": ["red", "green", "blue"]},
        "items": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "n": {"type": "number", "minimum": 0, "maximum": 1},
                    "ok": {"type": "boolean"},
                },
                "required": ["n"],
                "additionalProperties": False,
            },
        },
        "extra": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 3}]},
    },
    "required": ["title", "count", "colour", "items"],
    "additionalProperties": False,
}


def chat(client, content="Answer in JSON.", **kw):
    kw.setdefault("max_tokens", 120)
    return client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": content}], **kw},
    )


def json_schema_format(schema=SCHEMA):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_json_schema_answers_match_the_schema_greedy_sampled_and_n(client):
    image = {"type": "image_url", "image_url": {"url": png_data_url(random_image(60, 40, seed=2))}}
    requests = [
        {"temperature": 0},
        {"temperature": 1.0, "seed": 4, "n": 2},
        {"temperature": 0, "content": [image, {"type": "text", "text": "Describe the image in JSON."}]},
    ]
    for kw in requests:
        r = chat(client, response_format=json_schema_format(), **kw)
        assert r.status_code == 200, r.text
        for choice in r.json()["choices"]:
            assert choice["finish_reason"] == "stop", choice
            jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_streamed_json_equals_the_whole_answer(client):
    whole = chat(client, response_format=json_schema_format(), temperature=0).json()["choices"][0]
    pieces = []
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "Answer in JSON."}],
            "max_tokens": 120,
            "temperature": 0,
            "stream": True,
            "response_format": json_schema_format(),
        },
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                pieces += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
    assert "".join(pieces) == whole["message"]["content"]


def test_max_tokens_cut_is_length(client):
    r = chat(client, response_format=json_schema_format(), temperature=0, max_tokens=3)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")


def test_json_object_text_and_guided_extensions(client):
    r = chat(client, response_format={"type": "json_object"}, temperature=0, max_tokens=8)
    assert r.json()["choices"][0]["message"]["content"].startswith("{")
    free = chat(client, temperature=0, max_tokens=8).json()["choices"][0]["message"]["content"]
    text = chat(client, response_format={"type": "text"}, temperature=0, max_tokens=8)
    assert text.json()["choices"][0]["message"]["content"] == free
    r = chat(client, guided_regex=r"[A-Z][0-9]{2}", temperature=1.0, seed=3)
    assert re.fullmatch(r"[A-Z][0-9]{2}", r.json()["choices"][0]["message"]["content"])
    r = chat(client, guided_choice=["alpha", "beta"], temperature=1.0, seed=5, n=3)
    assert {c["message"]["content"] for c in r.json()["choices"]} <= {"alpha", "beta"}
    r = chat(
        client,
        guided_json={
            "type": "object",
            "properties": {"k": {"type": "boolean"}},
            "required": ["k"],
            "additionalProperties": False,
        },
        temperature=0,
    )
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"])["k"], bool)


def test_schemas_that_cannot_be_enforced_are_refused(client):
    r = chat(client, response_format=json_schema_format({"not": {"type": "string"}}))
    assert_error(r, 400, "invalid_request", "response_format.json_schema")
    r = chat(client, response_format=json_schema_format({"$ref": "#/$defs/missing"}))
    assert_error(r, 400, "invalid_request", "response_format.json_schema")
    r = chat(client, response_format={"type": "json_schema"})
    assert_error(r, 400, "invalid_request")
    r = chat(client, response_format={"type": "yaml"})
    assert_error(r, 400, "invalid_request")
    r = chat(client, guided_regex="(open")
    assert_error(r, 400, "invalid_request", "guided_regex")
    r = chat(client, response_format={"type": "json_object"}, guided_regex="a+")
    assert_error(r, 400, "invalid_request", "guided_regex")
    assert chat(client, max_tokens=2).status_code == 200  # and the server keeps serving


def test_logit_bias(client, tiny_model):
    expected = list(TokenTexts(tiny_model.tokenizer).bytes(65))
    r = chat(client, temperature=0, max_tokens=3, logit_bias={"65": 100}, logprobs=True)
    assert [t["bytes"] for t in r.json()["choices"][0]["logprobs"]["content"]] == [expected] * 3
    assert_error(chat(client, logit_bias={"65": 101}), 400, "invalid_request", "logit_bias")
    assert_error(chat(client, logit_bias={"x": 1}), 400, "invalid_request", "logit_bias")
    assert_error(chat(client, logit_bias={"99999999": 1}), 400, "invalid_request", "logit_bias")


@pytest.mark.parametrize("field", sorted(UNSUPPORTED_FIELDS))
def test_unimplemented_openai_fields_are_refused_by_name(client, field):
    value = {
        "audio": {"voice": "alloy", "format": "wav"},
        "modalities": ["text", "audio"],
        "store": True,
        "metadata": {"k": "v"},
        "service_tier": "flex",
        "reasoning_effort": "high",
    }.get(field, "x")
    assert_error(chat(client, max_tokens=2, **{field: value}), 400, "invalid_request", field)


def test_null_and_default_values_of_those_fields_are_accepted(client):
    defaults = {
        "store": False,
        "modalities": ["text"],
        "service_tier": "auto",
        "metadata": {},
        "audio": None,
        "prediction": None,
    }
    assert chat(client, max_tokens=2, **defaults).status_code == 200
