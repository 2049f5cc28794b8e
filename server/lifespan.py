"""The app's lifespan: the model loads in the background, the engine worker starts, a watchdog watches it.

While the model loads, /health and /ready answer (ready says "loading"). Once loaded: the engine,
its grammar compiler, the worker thread and the media loader become the `Runtime` of the
`ServerState` and the lifecycle turns READY. A model that cannot be loaded marks the lifecycle
FAILED (exit status 2, one line of reason); an engine worker that dies later marks it FAILED too
(exit status 1). Either way the state asks the process to exit. Knows no route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from model_runtime import Engine, EngineWorker, LoadedModel, load_pretrained_model
from model_runtime.arch.cpu_linear import pack_linears
from server import structured
from server.batch.runner import BatchRunner
from server.config import ServerConfig
from server.lifecycle import Phase
from server.media.loader import MediaLoader
from server.state import Runtime, ServerState
from server.store import StateStore

log = logging.getLogger("llava_serve")

_WATCHDOG_S = 1.0

Loader = Callable[[], LoadedModel]


def model_loader(config: ServerConfig, loaded: LoadedModel | None = None, load: Loader | None = None) -> Loader:
    """`loaded`: an already loaded checkpoint; `load`: how to load one (tests); else `config.model` is loaded."""
    if loaded is not None:
        return lambda: loaded
    if load is not None:
        return load
    return lambda: load_checkpoint(config)


def load_checkpoint(config: ServerConfig) -> LoadedModel:
    model = load_pretrained_model(config.model, model_base=config.model_base, dtype=config.dtype,
                                  device=config.device, device_map=config.device_map,
                                  quantization=config.quantization, hf_behaviour=config.hf_behaviour)
    if config.packed_linear:
        count = pack_linears(model.model)
        if count:
            log.info("%d linear layers packed for oneDNN (--no-packed-linear keeps them plain)", count)
    return model


def lifespan(load: Loader) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        state: ServerState = app.state.server
        await state.pool.start()
        tasks = [asyncio.create_task(watchdog(state))]
        state.store = await open_store(state)
        if state.store is not None:
            tasks += [asyncio.create_task(start_runtime(state, load)), asyncio.create_task(state.store.sweep_forever()),
                      asyncio.create_task(BatchRunner(state, state.store).run_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.runtime is not None:
                await asyncio.to_thread(state.runtime.worker.stop)
            if state.store is not None:
                await state.store.close()
            await state.pool.close()

    return run


async def open_store(state: ServerState) -> StateStore | None:
    """The state database, before the port serves; one that cannot be opened fails start-up like a model
    (status 2, and the model is not loaded)."""
    try:
        return await StateStore.open(state.config.store)
    except Exception as e:
        reason = f"the state database could not be opened: {_one_line(e)}"
        log.critical(reason)
        log.debug("opening the state database failed", exc_info=e)
        state.lifecycle.mark_failed(reason, exit_status=2)
        state.exit()
        return None


async def start_runtime(state: ServerState, load: Loader) -> None:
    config = state.config
    try:
        model = await asyncio.to_thread(load)
        log_precision(model)
        context_len = min(config.engine.max_model_len or model.context_len, model.context_len)
        engine = Engine(model.model, model.tokenizer, model.eos_token_ids, config.engine_config(context_len))
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
        state.lifecycle.mark_failed(reason, exit_status=2)
        state.exit()
        return
    media = MediaLoader(state.fetcher, state.pool, config.limits, model.processor, state.metrics)
    state.runtime = Runtime(model, worker, media, context_len, int(time.time()), grammars)
    state.metrics.model_info.info({
        "model": config.served_model_name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantization": model.quantization,
    })
    state.lifecycle.mark_ready(worker)
    log.info("serving %s on http://%s:%d", config.served_model_name, config.host, config.port)


def log_precision(model: LoadedModel) -> None:
    """One line for what the model computes in and why (`--dtype auto` decides by the hardware); a
    warning where its quantization is known to be slower than float32 on this CPU."""
    log.info("dtype %s: %s", str(model.dtype).removeprefix("torch."), model.dtype_reason or "as loaded")
    if model.quantization_slowdown:
        log.warning("--quantization %s is slower than float32 on this CPU: %s", model.quantization,
                    model.quantization_slowdown)


async def watchdog(state: ServerState) -> None:
    lifecycle = state.lifecycle
    while True:
        await asyncio.sleep(_WATCHDOG_S)
        health = lifecycle.health()
        if lifecycle.phase is Phase.READY and health is not None and (health.is_dead or not health.is_alive):
            log.critical("the engine worker died (%s); exiting so the orchestrator restarts us",
                         health.dead_reason or "thread stopped")
            lifecycle.mark_failed("the engine worker died")
            state.exit()


def _one_line(error: BaseException) -> str:
    """A start-up failure in one line, for the operator (never a client): a refused setting or config
    (ValueError, ConfigError) in its own words, anything else with its type."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
