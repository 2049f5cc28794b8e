"""Grammar-constrained decoding on the tiny random model: the mask makes random weights answer in schema.

Also: grammar rows batched with free rows give their solo tokens; max_tokens cuts with "length";
stop strings still stop; regex and choice grammars; logit_bias; the compiler's cache and refusals.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jsonschema
import pytest
import torch

from model_runtime.engine.grammar import GrammarCompiler, GrammarError, GrammarSpec, refused_tokens
from tests.model_runtime.engine.conftest import run

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "pos": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 9},
                "y": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["x", "y"],
            "additionalProperties": False,
        },
        "note": {"anyOf": [{"type": "boolean"}, {"type": "null"}, {"type": "integer", "maximum": 5}]},
    },
    "required": ["name", "age", "kind", "pos"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammars(tiny_model) -> GrammarCompiler:
    vocab = tiny_model.model.get_output_embeddings().out_features
    return GrammarCompiler(tiny_model.tokenizer, vocab, tiny_model.eos_token_ids)


def schema_grammar(grammars, schema=SCHEMA):
    return grammars.compile(GrammarSpec("json_schema", json.dumps(schema)))


def constrained(make_request, grammars, request_id, grammar=None, **params):
    params.setdefault("max_tokens", 120)
    request = make_request(request_id, "Answer in JSON.", ignore_eos=False, **params)
    return dataclasses.replace(request, grammar=grammar if grammar is not None else schema_grammar(grammars))


def test_random_weights_answer_schema_valid_json(new_engine, make_request, grammars):
    requests = [
        constrained(make_request, grammars, "greedy"),
        constrained(make_request, grammars, "seeded", temperature=1.0, seed=3, n=2),
        constrained(make_request, grammars, "filtered", temperature=0.7, top_k=50, top_p=0.9, seed=11),
    ]
    results = run(new_engine(), requests)
    answers = []
    for request in requests:
        for index in range(request.params.n):
            final = results[request.request_id].finals[index]
            text = "".join(results[request.request_id].texts[index])
            assert final.finish_reason == "stop", (request.request_id, text)
            answers.append(json.loads(text))
            jsonschema.validate(answers[-1], SCHEMA)
    assert len({json.dumps(a) for a in answers}) > 1  # the sampled rows really sampled


def test_grammar_rows_batched_with_free_rows_equal_their_solo_runs(new_engine, make_request, grammars):
    def requests():
        return [
            constrained(make_request, grammars, "g0", max_tokens=40),
            make_request("free0", "Tell me a story.", max_tokens=9),
            constrained(
                make_request,
                grammars,
                "g1",
                grammar=grammars.compile(GrammarSpec("json_object")),
                max_tokens=40,
            ),
            make_request("free1", "Describe it.", max_tokens=7, temperature=1.0, seed=5),
            constrained(make_request, grammars, "g2", temperature=1.0, seed=9, max_tokens=40),
        ]

    engine = new_engine()
    batched = run(engine, requests())
    for request in requests():
        assert run(engine, [request])[request.request_id].ids == batched[request.request_id].ids, (
            request.request_id
        )
    assert batched["g1"].text.startswith("{") and batched["g2"].text.startswith("{")


def test_max_tokens_cuts_with_length_and_stop_strings_still_stop(new_engine, make_request, grammars):
    cut = constrained(make_request, grammars, "cut", max_tokens=4)
    stopped = constrained(make_request, grammars, "stopped", stop=('"',))
    results = run(new_engine(), [cut, stopped])
    assert results["cut"].final.finish_reason == "length"
    assert len(results["cut"].ids) == 4 and results["cut"].text.startswith("{")
    assert results["stopped"].final.finish_reason == "stop"
    assert results["stopped"].final.stop_reason == '"' and results["stopped"].text == "{"


def test_regex_and_choice_grammars(new_engine, make_request, grammars):
    regex = grammars.compile(GrammarSpec("regex", r"[0-9]{3}-[a-c]{2}"))
    choice = grammars.compile(GrammarSpec("choice", json.dumps(["yes", "no", "maybe so"])))
    requests = [
        constrained(make_request, grammars, "regex", regex, temperature=1.0, seed=1),
        constrained(make_request, grammars, "choice", choice, temperature=1.0, seed=2, n=3),
    ]
    results = run(new_engine(), requests)
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", results["regex"].text)
    for index in range(3):
        assert "".join(results["choice"].texts[index]) in ("yes", "no", "maybe so")
        assert results["choice"].finals[index].finish_reason == "stop"


def test_logit_bias_moves_the_greedy_choice(new_engine, make_request):
    engine = new_engine()
    free = run(engine, [make_request("free", max_tokens=3)])["free"].ids
    pushed = run(engine, [make_request("pushed", max_tokens=3, logit_bias=((42, 100.0),))])["pushed"].ids
    assert pushed == [42, 42, 42] != free
    banned = run(engine, [make_request("banned", max_tokens=3, logit_bias=((free[0], -100.0),))])["banned"].ids
    assert banned[0] != free[0]


def test_logit_bias_limits(new_engine, make_request):
    from model_runtime import SamplingParamsError

    with pytest.raises(SamplingParamsError, match="logit_bias"):
        make_request("big", logit_bias=((1, 101.0),))
    with pytest.raises(SamplingParamsError, match="logit_bias"):
        make_request("many", logit_bias=tuple((i, 1.0) for i in range(301)))
    engine = new_engine()
    with pytest.raises(SamplingParamsError, match="vocabulary size"):
        engine.add_request(make_request("far", logit_bias=((engine.vocab_size, 1.0),)))


def test_compiler_caches_per_spec_and_refuses_what_it_cannot_enforce(grammars):
    first = schema_grammar(grammars)
    assert schema_grammar(grammars) is first
    assert grammars.compile(GrammarSpec("json_schema", json.dumps({"type": "integer"}))) is not first
    with pytest.raises(GrammarError, match="not"):
        grammars.compile(GrammarSpec("json_schema", json.dumps({"not": {"type": "string"}})))
    with pytest.raises(GrammarError):
        grammars.compile(GrammarSpec("json_schema", "{not json"))
    with pytest.raises(GrammarError):
        grammars.compile(GrammarSpec("regex", "(unclosed"))
    with pytest.raises(GrammarError, match="kind"):
        GrammarSpec("yaml", "")


def test_refused_tokens_are_the_matchers_bitmask_and_nothing_past_the_vocabulary(grammars, tiny_model):
    grammar = schema_grammar(grammars)
    matchers = [grammar.matcher(), grammar.matcher()]
    assert matchers[1].accept(tiny_model.tokenizer.encode("{", add_special_tokens=False)[0])
    wide = grammars.vocab_size + 40
    refused = refused_tokens(matchers, wide)
    assert refused.shape == (2, wide) and bool(refused[:, grammars.vocab_size :].all())
    for row, matcher in enumerate(matchers):
        bits = matcher.matcher.compute_bitmask()  # llguidance's own packed mask, one bit per token
        allowed = [t for t in range(grammars.vocab_size) if bits[t // 8] >> (t % 8) & 1]
        assert allowed and torch.nonzero(~refused[row]).flatten().tolist() == allowed
