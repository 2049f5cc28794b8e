"""create_app(): the HTTP front end of llava-serve.

Routes, lifespan (the model loads in the background while /health and /ready answer), request
ids, auth, the body limit and the one error renderer. A chat request flows: JSON ->
ChatCompletionRequest -> admission (429 before any media work) -> chat.render (item counts) ->
media loader (fetch, isolated decode, processing) -> prompt + context check -> engine worker ->
SSE chunks or one ChatCompletion. A client that disconnects aborts its request at any stage.
Imports only model_runtime's public names; knows nothing of tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_runtime import (
    Engine,
    EngineWorker,
    FaultInjection,
    GrammarCompiler,
    LoadedModel,
    SamplingParams,
    SamplingParamsError,
    load_pretrained_model,
)
from model_runtime import Request as EngineRequest
from model_runtime.arch.cpu_linear import pack_linears
from server import chat, playground, structured
from server.auth import APIKeyAuth
from server.completion import Generation, collect, stream
from server.config import ServerConfig
from server.errors import (
    APIError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    ShuttingDown,
)
from server.lifecycle import Lifecycle, Phase, Ticket
from server.media.fetch import MediaFetcher
from server.media.loader import MediaLoader
from server.media.pool import DecodePool
from server.metrics import Metrics
from server.middleware import BodyLimit, EarlyRefusal, RequestIds
from server.protocol import ChatCompletionRequest, ModelCard, ModelList
from server.tools import plan_tools

log = logging.getLogger("llava_serve")

_WATCHDOG_S = 1.0


@dataclass
class Runtime:
    loaded: LoadedModel
    worker: EngineWorker
    media: MediaLoader
    context_len: int
    started: int  # unix time the model became ready
    grammars: GrammarCompiler | None  # None: this tokenizer cannot drive a grammar (no structured outputs)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


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


def create_app(config: ServerConfig, loaded: LoadedModel | None = None,
               load: Callable[[], LoadedModel] | None = None, clock: Callable[[], float] = time.time,
               fault_injection: FaultInjection | None = None) -> FastAPI:
    """`loaded`: an already loaded checkpoint; `load`: how to load one (tests); else `config.model` is loaded.
    `clock` and `fault_injection` (engine faults on chosen request ids) are for tests.

    `app.state.lifecycle` is the server's state; `app.state.request_exit` (set by the runner) is
    called when the engine dies so the process can exit non-zero.
    """
    lifecycle = Lifecycle(config.max_queued_requests, config.shutdown_timeout, config.ready_stall_seconds, clock)
    state: dict[str, Runtime] = {}
    engine_ids: set[str] = set()  # ids of the requests in flight: a client's x-request-id names its request

    def stats():
        return state["rt"].worker.stats() if "rt" in state else None

    metrics = Metrics(stats, lambda: lifecycle.num_waiting)
    pool = DecodePool(config.media_workers, config.media_worker_memory_mb)
    fetcher = MediaFetcher(config.fetch)

    def load_model() -> LoadedModel:
        if loaded is not None:
            return loaded
        if load is not None:
            return load()
        model = load_pretrained_model(config.model, model_base=config.model_base, dtype=config.dtype,
                                      device=config.device, device_map=config.device_map,
                                      quantization=config.quantization, hf_behaviour=config.hf_behaviour)
        if config.packed_linear:
            count = pack_linears(model.model)
            if count:
                log.info("%d linear layers packed for oneDNN (--no-packed-linear keeps them plain)", count)
        return model

    async def start_runtime() -> None:
        try:
            model = await asyncio.to_thread(load_model)
            context_len = min(config.engine.max_model_len or model.context_len, model.context_len)
            engine = Engine(model.model, model.tokenizer, model.eos_token_ids,
                            config.engine_config(context_len, fault_injection))
            context_len = engine.max_model_len  # at most what the KV cache holds
            grammars = await asyncio.to_thread(structured.grammar_compiler, model, engine.vocab_size)
            worker = EngineWorker(engine)
            worker.start()
        except Exception as e:
            # a refusal (ConfigError), a missing file or a bad engine setting: one line, status 2;
            # the traceback only at --log-level debug
            reason = f"the model could not be loaded: {_one_line(e)}"
            log.critical(reason)
            log.debug("loading failed", exc_info=e)
            lifecycle.mark_failed(reason, exit_status=2)
            request_exit()
            return
        media = MediaLoader(fetcher, pool, config.limits, model.processor, metrics)
        state["rt"] = Runtime(model, worker, media, context_len, int(time.time()), grammars)
        metrics.model_info.info({
            "model": config.served_model_name,
            "dtype": str(model.dtype).removeprefix("torch."),
            "quantization": model.quantization,
        })
        lifecycle.mark_ready(worker)
        log.info("serving %s on http://%s:%d", config.served_model_name, config.host, config.port)

    def request_exit() -> None:
        callback = getattr(app.state, "request_exit", None)
        if callback is not None:
            callback()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(_WATCHDOG_S)
            health = lifecycle.health()
            if lifecycle.phase is Phase.READY and health is not None and (health.is_dead or not health.is_alive):
                log.critical("the engine worker died (%s); exiting so the orchestrator restarts us",
                             health.dead_reason or "thread stopped")
                lifecycle.mark_failed("the engine worker died")
                request_exit()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        starting = asyncio.create_task(start_runtime())
        watching = asyncio.create_task(watchdog())
        try:
            yield
        finally:
            for task in (starting, watching):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if "rt" in state:
                await asyncio.to_thread(state["rt"].worker.stop)
            await pool.close()

    app = FastAPI(title="llava-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics

    def count_error(error: APIError) -> None:
        metrics.errors.labels(code=error.code).inc()

    def render(error: APIError) -> JSONResponse:
        count_error(error)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    def check_queue() -> None:
        if lifecycle.phase is Phase.READY:  # other phases answer from the route, with their own reasons
            try:
                lifecycle.check_queue()
            except APIError:
                metrics.rejected.labels(reason="queue_full").inc()
                raise

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, on_error=count_error)
    app.add_middleware(EarlyRefusal, path="/v1/chat/completions", check=check_queue, on_error=count_error)
    app.add_middleware(APIKeyAuth, api_keys=config.api_keys, is_metrics_public=config.metrics_public,
                       on_error=count_error, public_paths=playground.public_paths(config))
    app.add_middleware(RequestIds, on_error=count_error)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return render(InvalidRequest("the request body is not valid JSON"))
        loc = [p for p in first.get("loc", ()) if p != "body"]
        param = _param(loc) or None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return render(InvalidRequest(f"{param or 'body'}: {message}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError("no such route" if exc.status_code == 404 else "method not allowed for this route",
                         code="not_found" if exc.status_code == 404 else "method_not_allowed")
        error.status = exc.status_code
        return render(error)

    def runtime() -> Runtime:
        try:
            lifecycle.check_serving()
        except APIError as e:
            metrics.rejected.labels(reason="shutting_down" if isinstance(e, ShuttingDown) else "not_ready").inc()
            raise
        return state["rt"]

    # -- probes and facts -------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        if lifecycle.is_live():
            return JSONResponse({"status": "ok", "phase": lifecycle.phase.value})
        return JSONResponse({"status": "unhealthy", "phase": lifecycle.phase.value}, status_code=503)

    @app.get("/ready")
    async def ready() -> Response:
        reason = lifecycle.not_ready_reason()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> Response:
        rt = state.get("rt")
        return JSONResponse({
            "version": metadata.version("llava-serve"),
            "model": config.served_model_name,
            "dtype": str(rt.loaded.dtype).removeprefix("torch.") if rt else None,
            "quantization": rt.loaded.quantization if rt else None,
            "is_demo": rt.loaded.is_demo if rt else None,
            "phase": lifecycle.phase.value,
        })

    def model_card(rt: Runtime) -> ModelCard:
        note = "RANDOM demo weights: generated text is meaningless" if rt.loaded.is_demo else "LLaVA checkpoint"
        return ModelCard(id=config.served_model_name, created=rt.started, max_model_len=rt.context_len,
                         modalities=["text", *sorted(rt.loaded.processor.modalities)], description=note)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[model_card(runtime())])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        rt = runtime()
        if model_id != config.served_model_name:
            raise ModelNotFound(f"model {model_id!r} is not served here", param="model")
        return model_card(rt)

    playground.mount(app, config)

    # -- chat -------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        arrival = time.monotonic()
        rt = runtime()
        if body.model != config.served_model_name:
            raise ModelNotFound(f"model {body.model!r} is not served here; try {config.served_model_name!r}",
                                param="model")
        try:
            ticket = lifecycle.admit()
        except APIError as e:
            metrics.rejected.labels(reason="queue_full" if e.status == 429 else "shutting_down").inc()
            raise
        is_streaming = False
        request_id = "chatcmpl-" + request.state.request_id
        if request_id in engine_ids:
            request_id = "chatcmpl-" + uuid.uuid4().hex
        engine_ids.add(request_id)
        try:
            engine_request, loaded_media, tool_plan = await until_disconnect(
                request, prepare(rt, body, request_id), ticket)
            gen = Generation(engine_request, loaded_media.reports, loaded_media.owners, config.served_model_name,
                             arrival, metrics, ticket, tool_plan.names)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                is_streaming = True
                def on_close() -> None:
                    gen.record()
                    engine_ids.discard(request_id)

                return EventStream(stream(gen, rt.worker, include_usage), on_close=on_close,
                                   media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            completion = await until_disconnect(request, collect(gen, rt.worker), None)
            return JSONResponse(completion.model_dump())
        except ClientGone:
            log.info("request %s: client went away", request.state.request_id)
            metrics.requests.labels(finish_reason="abort").inc()
            return Response(status_code=499)
        finally:
            if not is_streaming:
                ticket.close()
                engine_ids.discard(request_id)

    async def prepare(rt: Runtime, body: ChatCompletionRequest, request_id: str):
        processor = rt.loaded.processor
        structured.check_unsupported(body)
        logit_bias = structured.logit_bias(body, rt.worker.engine.vocab_size)
        tool_plan = plan_tools(body)
        grammar = await structured.answer_grammar(rt.grammars, body, tool_plan)
        rendered = chat.render(body.messages, processor, config.limits)
        loaded_media = await rt.media.load(rendered.media)
        try:
            prompt = processor.build_prompt(rendered.turns, loaded_media.inputs, tools=tool_plan.tools)
        except ValueError as e:
            raise InvalidRequest(f"the messages do not match their media: {e}", param="messages") from e
        context = rt.context_len
        requested = body.requested_max_tokens
        if prompt.num_tokens >= context or (requested is not None and prompt.num_tokens + requested > context):
            raise ContextLengthExceeded(
                f"this model's context is {context} tokens; the prompt takes {prompt.num_tokens} "
                f"(text {prompt.num_text_tokens}, media {prompt.num_media_tokens}) and max_tokens asks for "
                f"{requested if requested is not None else 'at least 1'}",
                param="max_tokens" if requested is not None and prompt.num_tokens < context else "messages",
            )
        if body.n > min(config.max_n, config.engine.max_num_seqs):
            raise InvalidRequest(f"n={body.n}: at most {min(config.max_n, config.engine.max_num_seqs)} here", param="n")
        try:
            params = SamplingParams(
                max_tokens=requested if requested is not None else context - prompt.num_tokens,
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                repetition_penalty=body.repetition_penalty, seed=body.seed, stop=tuple(body.stop or ()),
                ignore_eos=body.ignore_eos, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0, n=body.n,
                logit_bias=logit_bias,
            )
        except SamplingParamsError as e:
            raise InvalidRequest(str(e), param=e.param) from e
        return EngineRequest(request_id, prompt, loaded_media.inputs, params, grammar=grammar), loaded_media, tool_plan

    async def until_disconnect(request: Request, work: Awaitable, ticket: Ticket | None):
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

    return app


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _param(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
