"""The one request pipeline: every API's internal request -> an engine request -> that API's answer.

Each API is an `Adapter` (server/protocols/): its route turns the wire body into the internal
request (a `ChatCompletionRequest`, plus the raw prompt of a completion) and `run` does the rest
for all of them alike: the model check, admission (429 before any media work) -> `prepare`
(structured outputs and tools, chat.render with its item counts, the media loader: fetch,
isolated decode, processing; the prompt, the context check, the sampling parameters) -> the
engine worker -> the adapter's answer, whole or streamed (completion.py gives it the API-neutral
result). A client that disconnects aborts its request at any stage, and a drain cancels what is
still preparing. `prepare` takes no HTTP object, so tests drive it directly on a real runtime.
Model-runtime errors become API errors through `errors.from_runtime` only; each adapter renders
them in its API's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from model_runtime import Priority, PromptInput, RequestInputError, SamplingParams
from model_runtime import Request as EngineRequest
from server import chat, structured
from server.completion import ChoiceResult, Generation, Piece, collect, pieces
from server.config import ServerConfig
from server.errors import (
    APIError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    ShuttingDown,
    from_runtime,
)
from server.lifecycle import Lifecycle, Phase, Ticket
from server.media.loader import LoadedMedia
from server.protocol import ChatCompletionRequest
from server.state import Runtime, ServerState
from server.tools import ToolPlan, plan_tools

log = logging.getLogger("llava_serve")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


@dataclass
class Prepared:
    """A request ready for the engine, with what its answer reports."""

    request: EngineRequest
    media: LoadedMedia  # reports per item, and which item each of request.media belongs to
    tool_plan: ToolPlan


class EventStream(StreamingResponse):
    """SSE that always watches for the client leaving (whatever the ASGI server's spec version);
    `on_close` runs however the stream ends."""

    def __init__(self, content, on_close: Callable[[], None], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def run() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(run)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()


class Adapter(Protocol):
    """One API's wire format around the pipeline (server/protocols/): the answer, whole or streamed."""

    @property
    def id_prefix(self) -> str: ...  # of the request id its answer carries

    def answer(self, gen: Generation, results: list[ChoiceResult]) -> dict: ...

    def stream(self, gen: Generation, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]: ...


async def run(state: ServerState, adapter: Adapter, body: ChatCompletionRequest, request: Request,
              raw_prompt: str | list[int] | None = None) -> Response:
    """One request of any API, from the internal request to the adapter's answer."""
    arrival = time.monotonic()
    rt = state.serving_runtime()
    config = state.config
    check_model(config, body.model)
    ticket = admit(state)
    request_id = adapter.id_prefix + request.state.request_id
    if request_id in state.engine_ids:
        request_id = adapter.id_prefix + uuid.uuid4().hex
    state.engine_ids.add(request_id)
    is_streaming = False
    gen: Generation | None = None
    try:
        work = prepare(rt, config, body, request_id, raw_prompt=raw_prompt)
        prepared = await until_disconnect(state.lifecycle, request, work, ticket)
        gen = Generation(prepared.request, prepared.media, config.served_model_name, arrival, state.metrics, ticket,
                         prepared.tool_plan.names)
        if body.stream:
            is_streaming = True
            return respond_streaming(state, gen, rt, adapter)
        results = await until_disconnect(state.lifecycle, request, collect(gen, rt.worker), None)
        return JSONResponse(adapter.answer(gen, results))
    except ClientGone:
        log.info("request %s: client went away", request.state.request_id)
        if gen is None:  # gone before its generation: nothing else counts it
            state.metrics.requests.labels(finish_reason="abort").inc()
        else:
            gen.record()  # counts its choices' finish reasons (abort) once, whoever asks first
        return Response(status_code=499)
    finally:
        if not is_streaming:
            ticket.close()
            state.engine_ids.discard(request_id)


async def run_detached(state: ServerState, adapter: Adapter, body: ChatCompletionRequest, request_id: str,
                       raw_prompt: str | list[int] | None = None, priority: Priority = Priority.BATCH) -> dict:
    """One request without an HTTP request (a batch line): the same stages as `run`, whole (never streamed),
    its engine request in class `priority`. Returns the adapter's answer; raises the APIError a client would get
    (ShuttingDown, too, for a request a drain aborted)."""
    arrival = time.monotonic()
    rt = state.serving_runtime()
    check_model(state.config, body.model)
    ticket = admit(state)
    state.engine_ids.add(request_id)
    try:
        prepared = await prepare(rt, state.config, body, request_id, raw_prompt=raw_prompt, priority=priority)
        gen = Generation(prepared.request, prepared.media, state.config.served_model_name, arrival, state.metrics,
                         ticket, prepared.tool_plan.names)
        results = await collect(gen, rt.worker)
        if any(r.finish_reason == "abort" for r in results):  # cut by a drain: not an answer, it runs again
            raise ShuttingDown("the request was aborted before it finished")
        return adapter.answer(gen, results)
    finally:
        ticket.close()
        state.engine_ids.discard(request_id)


@dataclass(frozen=True)
class Counted:
    """A prompt rendered and counted exactly as generation would, with nothing generated."""

    prompt: PromptInput
    media: LoadedMedia
    context_len: int


async def count_prompt(state: ServerState, body: ChatCompletionRequest, request: Request,
                       raw_prompt: str | list[int] | None = None) -> Counted:
    """The prompt a request would get (its tools, its media loaded): what tokenize and count_tokens answer.
    Raises ClientGone when the client leaves first."""
    rt = state.serving_runtime()
    check_model(state.config, body.model)
    ticket = admit(state)  # media is fetched and decoded: admitted like any generation request
    try:
        if raw_prompt is not None:
            return Counted(raw_prompt_input(rt, raw_prompt), LoadedMedia(), rt.context_len)
        work = chat_prompt(rt, state.config, body, plan_tools(body))
        prompt, media = await until_disconnect(state.lifecycle, request, work, ticket)
        return Counted(prompt, media, rt.context_len)
    finally:
        ticket.close()


def check_model(config: ServerConfig, model: str) -> None:
    if model != config.served_model_name:
        raise ModelNotFound(f"model {model!r} is not served here; try {config.served_model_name!r}", param="model")


def admit(state: ServerState) -> Ticket:
    try:
        return state.lifecycle.admit()
    except APIError as e:
        state.metrics.rejected.labels(reason="queue_full" if e.status == 429 else "shutting_down").inc()
        raise


def respond_streaming(state: ServerState, gen: Generation, rt: Runtime, adapter: Adapter) -> EventStream:
    """The SSE answer; the request's ticket and id are released when the stream closes, however it ends."""

    def on_close() -> None:
        gen.record()
        state.engine_ids.discard(gen.request.request_id)

    return EventStream(adapter.stream(gen, translated(gen, pieces(gen, rt.worker))), on_close=on_close,
                       media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def translated(gen: Generation, source: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """The pieces, with any failure while streaming as the one API error the adapter renders (and counts)."""
    try:
        async for piece in source:
            yield piece
    except APIError as e:
        gen.metrics.errors.labels(code=e.code).inc()
        raise
    except Exception as e:
        log.exception("request %s failed while streaming", gen.request.request_id)
        error = from_runtime(e)
        gen.metrics.errors.labels(code=error.code).inc()
        raise error from e


async def prepare(rt: Runtime, config: ServerConfig, body: ChatCompletionRequest, request_id: str,
                  raw_prompt: str | list[int] | None = None, priority: Priority = Priority.INTERACTIVE) -> Prepared:
    """Everything before the engine: the answer's grammar, the media, the prompt, the checks.
    `raw_prompt` (completions): the prompt as given, text or token ids, instead of the messages."""
    structured.check_unsupported(body)
    logit_bias = structured.logit_bias(body, rt.worker.engine.vocab_size)
    tool_plan = plan_tools(body)
    grammar = await structured.answer_grammar(rt.grammars, body, tool_plan)
    if raw_prompt is None:
        prompt, loaded_media = await chat_prompt(rt, config, body, tool_plan)
    else:
        prompt, loaded_media = raw_prompt_input(rt, raw_prompt), LoadedMedia()
    check_context(prompt, rt.context_len, body.requested_max_tokens)
    max_n = min(config.max_n, config.engine.max_num_seqs)
    if body.n > max_n:
        raise InvalidRequest(f"n={body.n}: at most {max_n} here", param="n")
    params = sampling_params(body, rt.context_len - prompt.num_tokens, logit_bias)
    return Prepared(EngineRequest(request_id, prompt, loaded_media.inputs, params, grammar=grammar,
                                  priority=priority), loaded_media, tool_plan)


async def chat_prompt(rt: Runtime, config: ServerConfig, body: ChatCompletionRequest,
                      tool_plan: ToolPlan) -> tuple[PromptInput, LoadedMedia]:
    """The messages rendered, their media loaded, the template applied: the prompt and its media."""
    processor = rt.loaded.processor
    rendered = chat.render(body.messages, processor, config.limits)
    loaded_media = await rt.media.load(rendered.media)
    try:
        prompt = processor.build_prompt(rendered.turns, loaded_media.inputs, tools=tool_plan.tools)
    except RequestInputError as e:
        raise from_runtime(e, "messages", "the messages do not match their media: ") from e
    return prompt, loaded_media


def raw_prompt_input(rt: Runtime, raw: str | list[int]) -> PromptInput:
    """A prompt given as text (tokenised as it stands) or as token ids (each checked against the vocabulary)."""
    if isinstance(raw, str):
        ids = list(rt.loaded.processor.tokenizer(raw).input_ids)
    else:
        vocab_size = rt.worker.engine.vocab_size
        bad = next((i for i in raw if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"prompt: token id {bad} is not in this model's vocabulary (0..{vocab_size - 1})",
                                 param="prompt")
        ids = list(raw)
    if not ids:
        raise InvalidRequest("prompt: the prompt is empty", param="prompt")
    return PromptInput(token_ids=ids, num_text_tokens=len(ids), num_media_tokens=0)


def check_context(prompt: PromptInput, context_len: int, requested: int | None) -> None:
    """The 400 context_length_exceeded when the prompt (and the asked-for output) does not fit."""
    if prompt.num_tokens < context_len and (requested is None or prompt.num_tokens + requested <= context_len):
        return
    raise ContextLengthExceeded(
        f"this model's context is {context_len} tokens; the prompt takes {prompt.num_tokens} "
        f"(text {prompt.num_text_tokens}, media {prompt.num_media_tokens}) and max_tokens asks for "
        f"{requested if requested is not None else 'at least 1'}",
        param="max_tokens" if requested is not None and prompt.num_tokens < context_len else "messages",
    )


def sampling_params(body: ChatCompletionRequest, max_tokens_left: int, logit_bias: dict[int, float]) -> SamplingParams:
    """The engine's sampling parameters; `max_tokens` defaults to what the context leaves."""
    requested = body.requested_max_tokens
    try:
        return SamplingParams(
            max_tokens=requested if requested is not None else max_tokens_left,
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty, seed=body.seed, stop=tuple(body.stop or ()),
            ignore_eos=body.ignore_eos, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0, n=body.n,
            logit_bias=tuple(logit_bias.items()),
        )
    except RequestInputError as e:
        raise from_runtime(e) from e


async def until_disconnect(lifecycle: Lifecycle, request: Request, work: Awaitable, ticket: Ticket | None):
    """Run `work` unless the client leaves first (then cancel it); a drain may cancel it too."""
    task = asyncio.ensure_future(work)
    if ticket is not None:
        ticket.preparing = task
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if ticket is not None:
            ticket.preparing = None
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        watcher.cancel()
    if task.cancelled():
        if lifecycle.phase in (Phase.DRAINING, Phase.STOPPED):
            raise ShuttingDown()
        raise ClientGone()
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
