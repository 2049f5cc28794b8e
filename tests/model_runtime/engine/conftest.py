"""Helpers for the engine tests: real requests on the tiny model, and a driver for `Engine.step()`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from model_runtime import (
    ChatTurn,
    Engine,
    EngineConfig,
    Request,
    RequestOutput,
    SamplingParams,
    TokenLogprobs,
)
from testkit.faults import FaultInjection, inject
from tests.conftest import random_image


@dataclass
class Result:
    """Everything one request produced, per choice index."""

    token_ids: dict[int, list[int]] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)  # stream deltas
    finals: dict[int, RequestOutput] = field(default_factory=dict)
    logprobs: dict[int, list[TokenLogprobs]] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return self.token_ids.get(0, [])

    @property
    def text(self) -> str:
        return "".join(self.texts.get(0, []))

    @property
    def final(self) -> RequestOutput:
        return self.finals[0]


@pytest.fixture
def make_request(tiny_model):
    processor = tiny_model.processor

    def make(request_id: str, text: str = "Describe it.", images: Sequence = (), single_crop: bool = False,
             **params) -> Request:
        params.setdefault("max_tokens", 6)
        params.setdefault("temperature", 0)
        params.setdefault("ignore_eos", True)
        media = [processor.process_image(im, single_crop=single_crop) for im in images]
        placeholders = "<image>\n" * len(media)
        prompt = processor.build_prompt([ChatTurn("user", placeholders + text)], media)
        return Request(request_id, prompt, media, SamplingParams(**params))

    return make


@pytest.fixture
def new_engine(tiny_model):
    def build(faults: FaultInjection | None = None, clock=None, **config) -> Engine:
        config.setdefault("kv_cache_memory", 16 * 2**20)
        extra = {"clock": clock} if clock is not None else {}
        engine = Engine(tiny_model.model, tiny_model.tokenizer, tiny_model.eos_token_ids, EngineConfig(**config),
                        **extra)
        return inject(engine, faults) if faults is not None else engine

    return build


def collect(outputs: list[RequestOutput], results: dict[str, Result]) -> None:
    for o in outputs:
        r = results.setdefault(o.request_id, Result())
        r.token_ids.setdefault(o.index, []).extend(o.new_token_ids)
        r.texts.setdefault(o.index, []).append(o.text)
        if o.logprobs is not None:
            r.logprobs.setdefault(o.index, []).extend(o.logprobs)
        if o.finished:
            assert o.index not in r.finals, "a choice finished twice"
            r.finals[o.index] = o


def run(engine: Engine, requests: Sequence[Request], arrival_steps: Sequence[int] | None = None,
        max_steps: int = 2000) -> dict[str, Result]:
    """Add each request at its arrival step (default: all at once), step until all finish."""
    arrival_steps = arrival_steps or [0] * len(requests)
    pending = sorted(zip(arrival_steps, range(len(requests)), requests, strict=True))
    results: dict[str, Result] = {}
    step = 0
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            engine.add_request(pending.pop(0)[2])
        collect(engine.step(), results)
        step += 1
        assert step < max_steps, "the engine did not finish"
    for r in requests:
        assert len(results[r.request_id].finals) == r.params.n, f"{r.request_id} did not finish every choice"
    return results


def images(*sizes: tuple[int, int], seed: int = 0):
    return [random_image(w, h, seed=seed + i) for i, (w, h) in enumerate(sizes)]
