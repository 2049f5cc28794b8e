"""One batch line through the one pipeline: its body as the endpoint's route reads it, the answer as a result line.

The body is validated by the same wire model as the direct request, turned into the internal
request by the same adapter, and run by `pipeline.run_detached` with the engine's
Priority.BATCH, so a line's answer equals the direct request's (greedy). A refusal (any 4xx the
direct request would get, 500 included) is the line's answer, for the error file; a server that
cannot take the line now (draining, not ready, its queue full) leaves it to run again (`None`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from server import pipeline
from server.batch.lines import response_line
from server.errors import INTERNAL_MESSAGE, APIError, InternalError, InvalidRequest
from server.protocol import ChatCompletionRequest
from server.protocols.chat import ChatAdapter
from server.protocols.completions import CompletionAdapter, CompletionRequest, merge
from server.protocols.response_output import ResponsesAdapter
from server.protocols.responses import ResponsesRequest
from server.state import ServerState

log = logging.getLogger("llava_serve")

M = TypeVar("M", bound=BaseModel)

RETRY_STATUSES = (429, 503)  # the server cannot take the line now; it stays queued


@dataclass(frozen=True)
class LineOutcome:
    """A finished line: `succeeded` (a 200) or `failed` (the API refused it), with its result line."""

    status: str
    result: dict[str, Any]


async def run_line(state: ServerState, endpoint: str, custom_id: str, body: dict[str, Any]) -> LineOutcome | None:
    """The line's answer, or None when it must run again later (the server cannot take it now)."""
    request_id = uuid.uuid4().hex
    try:
        answer = await _answer(state, endpoint, body, request_id)
    except APIError as e:
        if e.status in RETRY_STATUSES:
            return None
        return LineOutcome("failed", response_line(custom_id, e.status, request_id, e.body()))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("batch line %r (request %s) failed", custom_id, request_id)
        error = InternalError(INTERNAL_MESSAGE)
        return LineOutcome("failed", response_line(custom_id, error.status, request_id, error.body()))
    return LineOutcome("succeeded", response_line(custom_id, 200, request_id, answer))


async def _answer(state: ServerState, endpoint: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    if body.get("stream"):
        raise InvalidRequest("stream: a batch line is answered whole; leave stream out", param="stream")
    if endpoint == "/v1/chat/completions":
        chat = _validated(ChatCompletionRequest, body)
        return await pipeline.run_detached(state, ChatAdapter(chat), chat, ChatAdapter.id_prefix + request_id)
    if endpoint == "/v1/responses":
        responses = _validated(ResponsesRequest, body)
        if responses.previous_response_id is not None:
            raise InvalidRequest("previous_response_id: a batch line starts its own conversation",
                                 param="previous_response_id")
        internal = responses.internal([], responses.input_items())
        adapter = ResponsesAdapter(responses, "resp_" + uuid.uuid4().hex)
        return await pipeline.run_detached(state, adapter, internal, adapter.id_prefix + request_id)
    if endpoint == "/v1/completions":
        return await _completion(state, _validated(CompletionRequest, body), request_id)
    raise InvalidRequest(f"endpoint {endpoint!r} is not one a batch runs", param="endpoint")


async def _completion(state: ServerState, body: CompletionRequest, request_id: str) -> dict[str, Any]:
    """As POST /v1/completions answers it (server/routes/completions.py): one run per prompt, merged."""
    internal = body.internal()
    tokenizer = state.serving_runtime().loaded.processor.tokenizer
    answers = []
    for i, prompt in enumerate(body.prompts()):
        echo = "" if not body.echo else prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        ids = CompletionAdapter.id_prefix + request_id + (f"-{i}" if i else "")
        answers.append(await pipeline.run_detached(state, CompletionAdapter(body, echo), internal, ids,
                                                   raw_prompt=prompt))
    return answers[0] if len(answers) == 1 else merge(answers)


def _validated(model: type[M], body: dict[str, Any]) -> M:
    """The wire model, or the 400 the route's validation gives (the first error, at its field)."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]).replace(".[", "[")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{param or 'body'}: {message}", param=param or None) from None
