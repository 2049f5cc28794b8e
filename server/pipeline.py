"""The chat pipeline: one ChatCompletionRequest -> an engine request -> SSE chunks or one ChatCompletion.

`chat_completion` runs it for a route: admission (429 before any media work) -> `prepare`
(structured outputs and tools, chat.render with its item counts, the media loader: fetch,
isolated decode, processing; the prompt, the context check, the sampling parameters) -> the
engine worker -> `respond` (completion.py shapes the answer). A client that disconnects aborts
its request at any stage, and a drain cancels what is still preparing. `prepare` takes no HTTP
object, so tests drive it directly on a real runtime. Model-runtime errors become API errors
through `errors.from_runtime` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from model_runtime import PromptInput, RequestInputError, SamplingParams
from model_runtime import Request as EngineRequest
from server import chat, structured
from server.completion import Generation, collect, stream
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


async def chat_completion(state: ServerState, body: ChatCompletionRequest, request: Request) -> Response:
    arrival = time.monotonic()
    rt = state.serving_runtime()
    config = state.config
    if body.model != config.served_model_name:
        raise ModelNotFound(f"model {body.model!r} is not served here; try {config.served_model_name!r}",
                            param="model")
    ticket = admit(state)
    request_id = "chatcmpl-" + request.state.request_id
    if request_id in state.engine_ids:
        request_id = "chatcmpl-" + uuid.uuid4().hex
    state.engine_ids.add(request_id)
    is_streaming = False
    try:
        prepared = await until_disconnect(state.lifecycle, request, prepare(rt, config, body, request_id), ticket)
        gen = Generation(prepared.request, prepared.media, config.served_model_name, arrival, state.metrics, ticket,
                         prepared.tool_plan.names)
        if body.stream:
            is_streaming = True
            return respond_streaming(state, gen, rt, body)
        completion = await until_disconnect(state.lifecycle, request, collect(gen, rt.worker), None)
        return JSONResponse(completion.model_dump())
    except ClientGone:
        log.info("request %s: client went away", request.state.request_id)
        state.metrics.requests.labels(finish_reason="abort").inc()
        return Response(status_code=499)
    finally:
        if not is_streaming:
            ticket.close()
            state.engine_ids.discard(request_id)


def admit(state: ServerState) -> Ticket:
    try:
        return state.lifecycle.admit()
    except APIError as e:
        state.metrics.rejected.labels(reason="queue_full" if e.status == 429 else "shutting_down").inc()
        raise


def respond_streaming(state: ServerState, gen: Generation, rt: Runtime, body: ChatCompletionRequest) -> EventStream:
    """The SSE answer; the request's ticket and id are released when the stream closes, however it ends."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def on_close() -> None:
        gen.record()
        state.engine_ids.discard(gen.request.request_id)

    return EventStream(stream(gen, rt.worker, include_usage), on_close=on_close, media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def prepare(rt: Runtime, config: ServerConfig, body: ChatCompletionRequest, request_id: str) -> Prepared:
    """Everything before the engine: the answer's grammar, the media, the prompt, the checks."""
    processor = rt.loaded.processor
    structured.check_unsupported(body)
    logit_bias = structured.logit_bias(body, rt.worker.engine.vocab_size)
    tool_plan = plan_tools(body)
    grammar = await structured.answer_grammar(rt.grammars, body, tool_plan)
    rendered = chat.render(body.messages, processor, config.limits)
    loaded_media = await rt.media.load(rendered.media)
    try:
        prompt = processor.build_prompt(rendered.turns, loaded_media.inputs, tools=tool_plan.tools)
    except RequestInputError as e:
        raise from_runtime(e, "messages", "the messages do not match their media: ") from e
    check_context(prompt, rt.context_len, body.requested_max_tokens)
    max_n = min(config.max_n, config.engine.max_num_seqs)
    if body.n > max_n:
        raise InvalidRequest(f"n={body.n}: at most {max_n} here", param="n")
    params = sampling_params(body, rt.context_len - prompt.num_tokens, logit_bias)
    return Prepared(EngineRequest(request_id, prompt, loaded_media.inputs, params, grammar=grammar), loaded_media,
                    tool_plan)


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
