"""Structured outputs: `response_format`, vLLM's `guided_*` extensions, `logit_bias`, refused fields.

`output_grammar(body)` turns the request's output constraint into a `GrammarSpec` (or None for
free text); `compile_grammar` compiles it on the loop's thread pool (the compiler caches per
spec), so the engine thread only ever fills masks. A schema the grammar engine cannot enforce is a
400 naming the field it came from, never a silent downgrade to free text. `check_unsupported`
refuses, by name, the OpenAI request fields llava-serve does not implement.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from model_runtime import CompiledGrammar, GrammarCompiler, GrammarError, GrammarSpec, LoadedModel
from server.errors import InvalidRequest, from_runtime
from server.protocol import ChatCompletionRequest
from server.tools import ToolPlan

log = logging.getLogger("llava_serve")

# OpenAI request fields not implemented here, each with the values that ask for nothing we lack
# (None is always accepted: clients send nulls for unset fields)
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "audio": (),  # audio output
    "functions": (),  # the deprecated form of `tools`
    "function_call": (),  # the deprecated form of `tool_choice`
    "metadata": ({},),  # for stored completions
    "modalities": (["text"],),  # text output is all there is
    "prediction": (),  # predicted outputs
    "reasoning_effort": (),  # reasoning models
    "service_tier": ("auto", "default"),
    "store": (False,),  # stored completions
    "verbosity": (),
    "web_search_options": (),
}


def check_unsupported(body: ChatCompletionRequest) -> None:
    for name, accepted in UNSUPPORTED_FIELDS.items():
        value = getattr(body, name)
        if value is not None and value not in accepted:
            allowed = " or ".join(json.dumps(a) for a in accepted)
            hint = f" (only {allowed} is accepted)" if accepted else ""
            raise InvalidRequest(f"`{name}` is not supported by this server{hint}", param=name)


def output_grammar(body: ChatCompletionRequest) -> tuple[GrammarSpec, str] | None:
    """The constraint on the answer's text and the field it came from; None for free text."""
    found: list[tuple[GrammarSpec, str]] = []
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append((GrammarSpec("json_object"), "response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.json_schema if fmt.json_schema is not None else None
        spec = (
            GrammarSpec("json_object")
            if schema is None
            else _schema_spec(schema, "response_format.json_schema")
        )
        found.append((spec, "response_format.json_schema"))
    if body.guided_json is not None:
        found.append((_schema_spec(body.guided_json, "guided_json"), "guided_json"))
    if body.guided_regex is not None:
        found.append((_spec("regex", body.guided_regex, "guided_regex"), "guided_regex"))
    if body.guided_choice is not None:
        if not body.guided_choice or not all(body.guided_choice):
            raise InvalidRequest("guided_choice needs non-empty strings", param="guided_choice")
        found.append((_spec("choice", json.dumps(body.guided_choice), "guided_choice"), "guided_choice"))
    if len(found) > 1:
        raise InvalidRequest(
            f"{found[0][1]} and {found[1][1]} both constrain the answer; give one", param=found[1][1]
        )
    return found[0] if found else None


def _schema_spec(schema: Any, param: str) -> GrammarSpec:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise InvalidRequest(f"{param}: the schema is not valid JSON", param=param) from e
    if not isinstance(schema, dict | bool):
        raise InvalidRequest(f"{param}: a JSON schema is an object", param=param)
    return _spec("json_schema", json.dumps(schema), param)  # key order kept: properties come in it


def _spec(kind: str, source: str, param: str) -> GrammarSpec:
    try:
        return GrammarSpec(kind, source)
    except GrammarError as e:
        raise from_runtime(e, param, f"{param}: ") from e


def grammar_compiler(model: LoadedModel, vocab_size: int) -> GrammarCompiler | None:
    """The checkpoint's compiler (about a second for a 150k vocabulary); None if its tokenizer cannot drive one."""
    try:
        return GrammarCompiler(model.tokenizer, vocab_size, model.eos_token_ids)
    except Exception as e:  # noqa: BLE001 - a tokenizer the grammar engine cannot read (not a fast tokenizer)
        log.warning(
            "structured outputs and tool grammars are off: the grammar engine cannot use this tokenizer (%s)",
            type(e).__name__,
        )
        return None


async def answer_grammar(
    grammars: GrammarCompiler | None, body: ChatCompletionRequest, tool_plan: ToolPlan
) -> CompiledGrammar | None:
    """The answer's grammar (response_format, guided_*, or the tool calls), compiled off the loop; or None."""
    constraint = output_grammar(body)
    if constraint is not None and tool_plan.parses_calls:
        raise InvalidRequest(
            f"{constraint[1]} and tools both shape the answer; with tools, set tool_choice "
            "to none or leave the answer's format free",
            param=constraint[1],
        )
    if constraint is None and tool_plan.grammar is not None:
        constraint = (tool_plan.grammar, "tools")
    if constraint is None:
        return None
    if grammars is None:
        raise InvalidRequest(
            "structured outputs are not available for this model's tokenizer", param=constraint[1]
        )
    return await compile_grammar(grammars, *constraint)


async def compile_grammar(grammars: GrammarCompiler, spec: GrammarSpec, param: str) -> CompiledGrammar:
    """Compile on the default thread pool (cached per spec); a refusal is a 400 naming `param`."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, grammars.compile, spec)
    except GrammarError as e:
        raise from_runtime(e, param, f"{param}: this schema cannot be enforced: ") from e


def logit_bias(body: ChatCompletionRequest, vocab_size: int) -> dict[int, float]:
    """`logit_bias` with int token ids, each below `vocab_size` (ranges: SamplingParams)."""
    out: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.strip().isdigit() or int(key) >= vocab_size:
            raise InvalidRequest(
                f"logit_bias: {key!r} is not a token id of this model (0..{vocab_size - 1})",
                param="logit_bias",
            )
        out[int(key)] = value
    return out

