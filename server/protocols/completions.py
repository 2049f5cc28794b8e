"""POST /v1/completions (OpenAI's legacy completions): the wire models and the adapter.

The prompt (a string, token ids, or a list of either: one request per prompt, answered together)
goes to the engine as it stands, without the chat template. `logprobs` (an integer) is the number
of alternatives per token, in the legacy shape (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`); `echo` puts the prompt before each choice's text. `suffix` and `best_of` > `n` are
refused, as is `echo` with `logprobs` (prompt logprobs are not computed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from server.completion import ChoiceResult, Generation, Piece
from server.errors import APIError, InvalidRequest
from server.protocol import (
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    GenerationParams,
    ResponseFormat,
    TokenLogprob,
    Usage,
)

MAX_PROMPTS = 16


class CompletionRequest(GenerationParams):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None  # refused
    best_of: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None  # extension (as vLLM): the same grammar as chat
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        if isinstance(value, list) and len(value) > MAX_PROMPTS and not isinstance(value[0], int):
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text or its token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [[int(i) for i in p]]
        return [x if isinstance(x, str) else list(x) for x in p]

    def internal(self) -> ChatCompletionRequest:
        """The internal request: these sampling fields, no messages (the raw prompt goes beside it)."""
        if self.suffix is not None:
            raise InvalidRequest("`suffix` is not supported by this server (no fill-in-the-middle)", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("`best_of` is not supported by this server (only best_of = n)", param="best_of")
        if self.echo and self.logprobs is not None:
            raise InvalidRequest("`echo` with `logprobs` needs prompt logprobs, which this server does not compute",
                                 param="echo")
        fields = self.model_dump(include=set(GenerationParams.model_fields) | {"response_format", "guided_json",
                                                                                "guided_regex", "guided_choice"})
        return ChatCompletionRequest.model_validate({
            **fields, "messages": [{"role": "user", "content": ""}],
            "logprobs": self.logprobs is not None, "top_logprobs": self.logprobs or None,
        })


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


def legacy_logprobs(items: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """Chat-shaped token logprobs -> the legacy lists; `offset`: characters of text before the first token."""
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(tokens=[t.token for t in items], token_logprobs=[t.logprob for t in items],
                              top_logprobs=[{a.token: a.logprob for a in t.top_logprobs} for t in items],
                              text_offset=offsets)


@dataclass(frozen=True)
class CompletionAdapter:
    body: CompletionRequest
    echo_text: str = ""  # the prompt's text, when `echo`
    id_prefix: str = "cmpl-"

    def answer(self, gen: Generation, results: list[ChoiceResult]) -> dict:
        choices = [
            CompletionChoice(index=i, text=self.echo_text + r.text, finish_reason=r.finish_reason,
                             logprobs=legacy_logprobs(r.logprobs, len(self.echo_text)) if gen.wants_logprobs else None)
            for i, r in enumerate(results)
        ]
        return Completion(id=gen.request.request_id, created=gen.created, model=gen.model_name, choices=choices,
                          usage=gen.usage()).model_dump(exclude_none=True) | {"media": gen.media()}

    async def stream(self, gen: Generation, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        offsets = [len(self.echo_text)] * gen.request.params.n

        def chunk(choice: CompletionChoice | None, usage: Usage | None = None) -> str:
            c = Completion(id=gen.request.request_id, created=gen.created, model=gen.model_name,
                           choices=[choice] if choice else [], usage=usage)
            return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

        try:
            if self.echo_text:
                for i in range(gen.request.params.n):
                    yield chunk(CompletionChoice(index=i, text=self.echo_text))
            async for piece in pieces:
                if piece.kind == "finish":
                    yield chunk(CompletionChoice(index=piece.index, text="", finish_reason=piece.finish_reason))
                    continue
                logprobs = None
                if gen.wants_logprobs and piece.logprobs:
                    logprobs = legacy_logprobs(piece.logprobs, offsets[piece.index])
                offsets[piece.index] += len(piece.text)
                yield chunk(CompletionChoice(index=piece.index, text=piece.text, logprobs=logprobs))
        except APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        else:
            if include_usage:
                yield chunk(None, usage=gen.usage())
        yield "data: [DONE]\n\n"


def merge(answers: list[dict]) -> dict:
    """Several prompts' answers as one: choices renumbered in prompt order, usage summed."""
    first = dict(answers[0])
    choices: list[dict] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for answer in answers:
        for choice in answer["choices"]:
            choices.append({**choice, "index": len(choices)})
        for key in usage:
            usage[key] += answer["usage"][key]
    first["choices"], first["usage"] = choices, {**answers[0]["usage"], **usage}
    first["media"] = []
    return first
