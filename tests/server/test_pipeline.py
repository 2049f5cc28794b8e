"""The chat pipeline driven directly, without HTTP: a real runtime (the tiny model, its engine worker,
the media loader with a real decoder process) started by the lifespan's own `start_runtime`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from model_runtime import PromptInput
from server import pipeline
from server.completion import Generation, collect
from server.config import ServerConfig
from server.errors import INTERNAL_MESSAGE, ContextLengthExceeded, InternalError, InvalidRequest, from_runtime
from server.lifespan import start_runtime
from server.protocol import ChatCompletion, ChatCompletionRequest
from server.protocols.chat import ChatAdapter
from server.state import ServerState
from tests.conftest import png_data_url, random_image

CONFIG = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, max_n=2)


@contextlib.asynccontextmanager
async def serving(model) -> AsyncIterator[ServerState]:
    state = ServerState.build(CONFIG)
    await state.pool.start()
    try:
        await start_runtime(state, lambda: model)
        assert state.runtime is not None, state.lifecycle.failure
        yield state
    finally:
        if state.runtime is not None:
            await asyncio.to_thread(state.runtime.worker.stop)
        await state.pool.close()


def body(content, **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "tiny", "messages": [{"role": "user", "content": content}],
                                                 **kw})


def with_image(text: str) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": png_data_url(random_image(40, 30))}},
            {"type": "text", "text": text}]


def test_prepare_then_generate_an_image_request(tiny_model):
    async def scenario() -> None:
        async with serving(tiny_model) as state:
            rt = state.runtime
            prepared_body = body(with_image("What is it?"), max_tokens=3, temperature=0, n=2)
            prepared = await pipeline.prepare(rt, CONFIG, prepared_body, "chatcmpl-a")
            request = prepared.request
            assert request.request_id == "chatcmpl-a" and request.params.max_tokens == 3 and request.params.n == 2
            assert [m.modality for m in request.media] == ["image"]
            assert [x.report for x in prepared.media.loaded] == prepared.media.reports  # each input -> its report
            assert prepared.media.reports[0].modality == "image"
            assert request.prompt.num_media_tokens == request.media[0].num_tokens > 0
            gen = Generation(request, prepared.media, "tiny", time.monotonic(), state.metrics, state.lifecycle.admit(),
                             prepared.tool_plan.names)
            completion = ChatCompletion.model_validate(ChatAdapter(prepared_body).answer(gen, await collect(gen,
                                                                                                     rt.worker)))
            assert completion.id == "chatcmpl-a" and len(completion.choices) == 2
            assert completion.usage.prompt_tokens == request.num_prompt_tokens
            assert 2 <= completion.usage.completion_tokens <= 6
            assert completion.usage.prompt_tokens_details.image_tokens == request.media[0].num_tokens
            assert state.lifecycle.num_in_flight == 0  # the ticket closed with the request

            text_only = await pipeline.prepare(rt, CONFIG, body("hi"), "chatcmpl-b")
            assert text_only.request.media == [] and text_only.media.reports == []
            assert text_only.request.params.max_tokens == rt.context_len - text_only.request.num_prompt_tokens

    asyncio.run(scenario())


def test_refusals_come_before_the_engine(tiny_model):
    async def scenario() -> None:
        async with serving(tiny_model) as state:
            rt = state.runtime
            with pytest.raises(ContextLengthExceeded) as e:
                await pipeline.prepare(rt, CONFIG, body("hi", max_tokens=rt.context_len), "chatcmpl-c")
            assert e.value.param == "max_tokens" and f"context is {rt.context_len} tokens" in e.value.message
            with pytest.raises(InvalidRequest) as e:
                await pipeline.prepare(rt, CONFIG, body("hi", n=3), "chatcmpl-d")
            assert e.value.param == "n" and e.value.message == "n=3: at most 2 here"
            with pytest.raises(InvalidRequest) as e:
                await pipeline.prepare(rt, CONFIG, body("look: <image>"), "chatcmpl-e")
            assert e.value.param == "messages[0].content" and "<image>" in e.value.message
            assert rt.worker.stats().num_steps == 0  # nothing reached the engine

    asyncio.run(scenario())


def test_an_internal_value_error_is_not_a_client_message(tiny_model, monkeypatch):
    """A plain ValueError from inside the runtime stays an internal fault: it reaches the caller of
    `prepare` untranslated, and `from_runtime` makes it a 500 that says nothing of it."""

    def broken(*args, **kwargs):
        raise ValueError("secret detail at /srv/model_runtime/processing/processor.py")

    async def scenario() -> None:
        async with serving(tiny_model) as state:
            monkeypatch.setattr(tiny_model.processor, "build_prompt", broken)
            with pytest.raises(ValueError) as e:
                await pipeline.prepare(state.runtime, CONFIG, body("hi"), "chatcmpl-f")
            error = from_runtime(e.value)
            assert isinstance(error, InternalError) and error.status == 500
            assert error.message == INTERNAL_MESSAGE and "secret" not in error.json_bytes().decode()

    asyncio.run(scenario())


@pytest.mark.parametrize(("num_tokens", "requested", "param"), [
    (100, None, "messages"),  # the prompt alone fills the context
    (90, 11, "max_tokens"),  # the prompt fits, not with the output asked for
    (101, 5, "messages"),
])
def test_context_check_names_what_overflows(num_tokens, requested, param):
    prompt = PromptInput(token_ids=[], num_text_tokens=num_tokens - 10, num_media_tokens=10)
    with pytest.raises(ContextLengthExceeded) as e:
        pipeline.check_context(prompt, 100, requested)
    assert e.value.param == param
    assert f"the prompt takes {num_tokens} (text {num_tokens - 10}, media 10)" in e.value.message


def test_context_check_lets_a_fitting_request_through():
    prompt = PromptInput(token_ids=[], num_text_tokens=89, num_media_tokens=1)
    pipeline.check_context(prompt, 100, 10)
    pipeline.check_context(prompt, 100, None)


def test_a_sampling_refusal_names_its_field():
    with pytest.raises(InvalidRequest) as e:
        pipeline.sampling_params(body("hi"), 0, {})  # no room left for a single token
    assert e.value.param == "max_tokens" and e.value.message == "max_tokens: 0: must be >= 1"
