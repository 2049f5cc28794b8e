"""create_app(): the HTTP front end of llava-serve.

Routes, lifespan (load the checkpoint, start the engine worker), request ids and the one error
renderer. A request flows: JSON -> ChatCompletionRequest -> chat.render -> media decode (off the
event loop) -> processor (tensors + exact token counts) -> context check -> engine worker ->
SSE chunks or one ChatCompletion. Imports only model_runtime's public names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_runtime import Engine as _Engine
from model_runtime import (
    EngineConfig,
    EngineDeadError,
    EngineWorker,
    LoadedModel,
    MediaInput,
    PromptInput,
    SamplingParams,
    load_pretrained_model,
)
from model_runtime import Request as EngineRequest
from server import chat
from server.config import ServerConfig
from server.errors import (
    APIError,
    ContextLengthExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
)
from server.media.image import decode_data_url, load_image
from server.metrics import Metrics
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)

log = logging.getLogger("llava_serve")


@dataclass
class Runtime:
    loaded: LoadedModel
    worker: EngineWorker
    started: int  # unix time the model became ready


@dataclass(frozen=True)
class Prepared:
    prompt: PromptInput
    media: list[MediaInput]
    params: SamplingParams


def create_app(config: ServerConfig, loaded: LoadedModel | None = None) -> FastAPI:
    """`loaded`: an already loaded checkpoint (tests); otherwise the lifespan loads `config.model`."""
    state: dict[str, Runtime] = {}
    metrics = Metrics(lambda: state["rt"].worker.stats() if "rt" in state else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = loaded
        if model is None:
            model = await asyncio.to_thread(
                load_pretrained_model, config.model, model_base=config.model_base, dtype=config.dtype,
                device=config.device, device_map=config.device_map, quantization=config.quantization)
        engine = _Engine(model.model, model.tokenizer, model.eos_token_ids, EngineConfig(max_num_seqs=config.max_num_seqs))
        worker = EngineWorker(engine)
        worker.start()
        state["rt"] = Runtime(model, worker, int(time.time()))
        metrics.model_info.info({
            "model": config.served_model_name,
            "dtype": str(model.dtype).removeprefix("torch."),
            "quantization": model.quantization,
        })
        log.info("serving %s (%s) on http://%s:%d", config.served_model_name, config.model, config.host, config.port)
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="llava-serve", lifespan=lifespan)

    def runtime() -> Runtime:
        rt = state.get("rt")
        if rt is None:
            raise NotReady("the model is still loading", headers={"Retry-After": "5"})
        if not rt.worker.is_alive:
            raise NotReady("the engine worker has stopped", headers={"Retry-After": "5"})
        return rt

    # -- errors and request ids -----------------------------------------------------------------
    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id")
        if not rid or len(rid) > 128 or not rid.isprintable():
            rid = uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.errors.labels(code=exc.code).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            err = InvalidRequest("the request body is not valid JSON")
        else:
            loc = [p for p in first.get("loc", ()) if p != "body"]
            err = InvalidRequest(f"{_param(loc) or 'body'}: {first.get('msg', 'invalid value')}", param=_param(loc) or None)
        metrics.errors.labels(code=err.code).inc()
        return err.response()

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", getattr(request.state, "request_id", "?"))
        err = InternalError("internal error; see the server log for this request id")
        metrics.errors.labels(code=err.code).inc()
        return err.response()

    # -- routes -----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        rt = state.get("rt")
        if rt is not None and not rt.worker.is_alive:
            return JSONResponse({"status": "engine worker stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> ModelList:
        rt = runtime()
        note = "RANDOM demo weights: generated text is meaningless" if rt.loaded.is_demo else "LLaVA checkpoint"
        card = ModelCard(id=config.served_model_name, created=rt.started, max_model_len=rt.loaded.context_len,
                         description=note)
        return ModelList(data=[card])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        rt = runtime()
        if body.model != config.served_model_name:
            raise ModelNotFound(f"model {body.model!r} is not served here; try {config.served_model_name!r}",
                                param="model")
        prepared = await prepare(rt, body)
        rid = "chatcmpl-" + request.state.request_id
        engine_request = EngineRequest(rid, prepared.prompt, prepared.media, prepared.params)
        usage_base = _usage_details(prepared)
        if body.stream:
            return StreamingResponse(
                stream(rt, engine_request, body, usage_base), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await complete(rt, engine_request, body, usage_base)

    # -- request handling -------------------------------------------------------------------
    async def prepare(rt: Runtime, body: ChatCompletionRequest) -> Prepared:
        processor = rt.loaded.processor
        rendered = chat.render(body.messages, processor)

        def decode_and_process() -> list[MediaInput]:
            single_crop = len(rendered.media) > 1  # several images: one padded crop each (spec 3.4)
            items = []
            for ref in rendered.media:
                image = load_image(decode_data_url(ref.url, ref.param), ref.param)
                items.append(processor.process_image(image, single_crop=single_crop))
            return items

        media = await asyncio.to_thread(decode_and_process)
        prompt = processor.build_prompt(rendered.turns, media)
        context = rt.loaded.context_len
        requested = body.requested_max_tokens
        if prompt.num_tokens >= context or (requested is not None and prompt.num_tokens + requested > context):
            raise ContextLengthExceeded(
                f"this model's context is {context} tokens; the prompt takes {prompt.num_tokens} "
                f"(text {prompt.num_text_tokens}, media {prompt.num_media_tokens}) and max_tokens asks for "
                f"{requested if requested is not None else 'at least 1'}",
                param="messages",
            )
        try:
            params = SamplingParams(
                max_tokens=requested if requested is not None else context - prompt.num_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
            )
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        return Prepared(prompt, media, params)

    async def complete(rt: Runtime, req: EngineRequest, body: ChatCompletionRequest, details: PromptTokensDetails):
        text: list[str] = []
        last = None
        async for out in generate(rt, req):
            text.append(out.text)
            last = out
        assert last is not None
        if last.finish_reason == "error":
            raise InternalError("generation failed for this request", headers={"x-should-retry": "false"})
        usage = Usage(prompt_tokens=last.num_prompt_tokens, completion_tokens=last.num_output_tokens,
                      total_tokens=last.num_prompt_tokens + last.num_output_tokens, prompt_tokens_details=details)
        choice = Choice(index=0, message=AssistantMessage(content="".join(text)), finish_reason=last.finish_reason)
        return JSONResponse(ChatCompletion(id=req.request_id, model=config.served_model_name, choices=[choice],
                                           usage=usage).model_dump())

    async def stream(rt: Runtime, req: EngineRequest, body: ChatCompletionRequest, details: PromptTokensDetails):
        created = int(time.time())

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, empty: bool = False) -> str:
            choices = [] if empty else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            c = ChatCompletionChunk(id=req.request_id, created=created, model=config.served_model_name,
                                    choices=choices, usage=usage)
            return f"data: {c.model_dump_json(exclude_none=False)}\n\n"

        yield chunk(Delta(role="assistant", content=""))
        last = None
        try:
            async for out in generate(rt, req):
                last = out
                if out.finished and out.finish_reason == "error":
                    err = InternalError("generation failed for this request")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                if out.text:
                    yield chunk(Delta(content=out.text))
                if out.finished:
                    yield chunk(Delta(), finish=out.finish_reason)
        except APIError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
        if last is not None and body.stream_options is not None and body.stream_options.include_usage:
            usage = Usage(prompt_tokens=last.num_prompt_tokens, completion_tokens=last.num_output_tokens,
                          total_tokens=last.num_prompt_tokens + last.num_output_tokens, prompt_tokens_details=details)
            yield chunk(Delta(), usage=usage, empty=True)
        yield "data: [DONE]\n\n"

    async def generate(rt: Runtime, req: EngineRequest):
        start = time.monotonic()
        first = True
        try:
            async for out in rt.worker.generate(req):
                if first and out.new_token_ids:
                    metrics.ttft.observe(time.monotonic() - start)
                    first = False
                if out.finished:
                    metrics.requests.labels(finish_reason=out.finish_reason).inc()
                    metrics.generation_tokens.inc(out.num_output_tokens)
                    metrics.prompt_tokens.labels(modality="text").inc(req.prompt.num_text_tokens)
                    metrics.prompt_tokens.labels(modality="image").inc(req.prompt.num_media_tokens)
                    metrics.e2e.observe(time.monotonic() - start)
                yield out
        except EngineDeadError as e:
            raise NotReady("the engine worker has stopped", headers={"Retry-After": "5"}) from e

    return app


def _usage_details(prepared: Prepared) -> PromptTokensDetails:
    return PromptTokensDetails(
        text_tokens=prepared.prompt.num_text_tokens,
        image_tokens=sum(m.num_tokens for m in prepared.media if m.modality == "image"),
    )


def _param(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
