"""Engine outputs of one request -> the one API-neutral result, whole or piece by piece, with usage and metrics.

`Generation` consumes the worker's `RequestOutput`s for all `n` choices of one request and keeps
what every API's answer needs; `collect()` gives each choice's whole `ChoiceResult`, `pieces()`
the same answer as a stream of `Piece`s (content, a call's start, a piece of its arguments, a
choice's finish). Each API's adapter (server/protocols/) renders these in its own wire format;
none of them sees a `RequestOutput`. With tools, each choice's text goes through a `CallParser`
(tools.py) and a stopped answer with calls finishes with "tool_calls". A failed choice raises the
API error (`Generation.failure`). Every per-request series of the metrics is observed here, once,
when the request ends. Everything it knows of the engine
arrives in the outputs (a frozen message per step, through the worker's queue): whether a failure
was the engine stopping is the failing output's own flag, never a look at the engine's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from model_runtime import EngineDeadError, EngineDrainingError, EngineWorker, RequestOutput, TokenLogprobs
from model_runtime import Request as EngineRequest
from server.errors import APIError, InternalError, NotReady, from_runtime
from server.lifecycle import Ticket
from server.media.loader import LoadedMedia
from server.metrics import Metrics
from server.protocol import PromptTokensDetails, TokenLogprob, TopLogprob, Usage
from server.tools import CallParser

log = logging.getLogger(__name__)


@dataclass
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_tokens: int = 0
    last_token_time: float | None = None


def to_logprobs(items: list[TokenLogprobs]) -> list[TokenLogprob]:
    return [
        TokenLogprob(token=t.chosen.token, logprob=t.chosen.logprob, bytes=list(t.chosen.bytes),
                     top_logprobs=[TopLogprob(token=a.token, logprob=a.logprob, bytes=list(a.bytes)) for a in t.top])
        for t in items
    ]


class Generation:
    def __init__(self, request: EngineRequest, loaded_media: LoadedMedia, model_name: str, arrival: float,
                 metrics: Metrics, ticket: Ticket, tool_names: frozenset[str] = frozenset()) -> None:
        self.request = request
        self.loaded_media = loaded_media  # request.media, each input with its part's report
        self.model_name = model_name
        self.arrival = arrival  # time.monotonic() when the HTTP request arrived
        self.metrics = metrics
        self.ticket = ticket
        self.created = int(time.time())
        self.choices = [_ChoiceState() for _ in range(request.params.n)]
        self.tool_names = tool_names  # functions whose calls are parsed out of the answers (none: no parsing)
        self.first_token_time: float | None = None
        self.has_cache_hits = False  # the engine's verdicts are in the media reports
        self.is_engine_dead = False  # a choice failed because the engine (or its worker) stopped
        self.num_cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.is_recorded = False

    @property
    def wants_logprobs(self) -> bool:
        return self.request.params.logprobs

    # -- consuming the engine ---------------------------------------------------------------
    async def outputs(self, worker: EngineWorker) -> AsyncIterator[RequestOutput]:
        try:
            async for out in worker.generate(self.request):
                self._absorb(out)
                yield out
        except (EngineDrainingError, EngineDeadError) as e:
            raise from_runtime(e) from e
        finally:
            self.record()

    def _absorb(self, out: RequestOutput) -> None:
        now = time.monotonic()
        self.ticket.start()
        choice = self.choices[out.index]
        if out.new_token_ids:
            if self.first_token_time is None:
                self.first_token_time = now
                self.metrics.ttft.observe(now - self.arrival)
            elif choice.last_token_time is not None:
                self.metrics.itl.observe(now - choice.last_token_time)
            choice.last_token_time = now
        choice.text.append(out.text)
        choice.num_tokens = out.num_output_tokens
        if out.logprobs:
            choice.logprobs.extend(to_logprobs(out.logprobs))
        if out.finished:
            choice.finish_reason = out.finish_reason
            if out.error:
                log.error("request %s choice %d failed in the engine: %s", self.request.request_id, out.index,
                          out.error)
            self.is_engine_dead = self.is_engine_dead or out.is_engine_dead
            if out.metrics is not None:
                self._add_cache_hits(out.metrics.media_cache_hits)
                self.num_cached_tokens = max(self.num_cached_tokens, out.metrics.num_cached_tokens)
                if out.index == 0:
                    self._observe_timings(out)

    def _add_cache_hits(self, hits: tuple[bool, ...]) -> None:
        """Once: every choice's final metrics carry the same per-request verdicts."""
        if hits and not self.has_cache_hits:
            self.has_cache_hits = True
            for loaded, hit in zip(self.loaded_media.loaded, hits, strict=True):
                loaded.report.add_cache_hit(hit)

    def _observe_timings(self, out: RequestOutput) -> None:
        m = out.metrics
        assert m is not None
        self.metrics.queue_time.observe(max(m.queue_time, 0.0))
        if m.scheduled_time is not None:
            self.metrics.prefill_time.observe(max(m.prefill_time, 0.0))
            self.metrics.decode_time.observe(max(m.decode_time, 0.0))
        for modality, seconds in m.encoder_seconds.items():
            self.metrics.encoder_forward.labels(modality=modality).observe(seconds)

    def record(self) -> None:
        """Once per request: the counters and the per-request histograms."""
        if self.is_recorded:
            return
        self.is_recorded = True
        self.ticket.close()
        details = self.usage_details()
        for modality in ("text", "image", "video", "audio"):
            count = getattr(details, f"{modality}_tokens")
            if count:
                self.metrics.prompt_tokens.labels(modality=modality).inc(count)
        num_generated = sum(c.num_tokens for c in self.choices)
        self.metrics.generation_tokens.inc(num_generated)
        for choice in self.choices:
            self.metrics.requests.labels(finish_reason=choice.finish_reason or "abort").inc()
        for item in self.request.media:
            self.metrics.media_items.labels(modality=item.modality).inc()
        self.metrics.request_prompt_tokens.observe(self.request.num_prompt_tokens)
        self.metrics.request_generation_tokens.observe(num_generated)
        self.metrics.e2e.observe(time.monotonic() - self.arrival)

    # -- pieces of both responses -----------------------------------------------------------
    def usage_details(self) -> PromptTokensDetails:
        per_modality = {"image": 0, "video": 0, "audio": 0}
        for item in self.request.media:
            per_modality[item.modality] += item.num_tokens
        return PromptTokensDetails(text_tokens=self.request.prompt.num_text_tokens,
                                   cached_tokens=self.num_cached_tokens,
                                   **{f"{m}_tokens": n for m, n in per_modality.items()})

    def usage(self) -> Usage:
        prompt = self.request.num_prompt_tokens
        completion = sum(c.num_tokens for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=self.usage_details())

    def media(self) -> list[dict[str, Any]]:
        return [report.to_json() for report in self.loaded_media.reports]

    def parser(self) -> CallParser | None:
        return CallParser(self.tool_names) if self.tool_names else None

    def failure(self) -> APIError:
        """The error for a request one of whose choices finished with "error"."""
        if self.is_engine_dead:
            return NotReady("the engine worker has stopped")
        return InternalError("generation failed for this request; see the server log for its request id")




@dataclass(frozen=True)
class ChoiceResult:
    """One choice's whole answer, API-neutral."""

    text: str  # content outside tool calls
    calls: list[dict]  # {"id", "name", "arguments"} in order (tools.CallParser)
    finish_reason: str | None  # "stop" | "length" | "tool_calls" | "abort"
    stop_reason: str | int | None  # the stop string or token id that ended it (None: EOS or length)
    logprobs: list[TokenLogprob]
    num_tokens: int


@dataclass(frozen=True)
class Piece:
    """A piece of one choice's answer as it streams."""

    index: int  # the choice
    kind: str  # "content" | "call" (a call starts: id, name) | "arguments" | "finish"
    text: str = ""  # content or arguments text
    call_index: int = 0  # the call's place among the choice's calls
    call_id: str = ""
    name: str = ""
    logprobs: list[TokenLogprob] | None = None  # the tokens this piece's output added (first piece of it)
    finish_reason: str | None = None  # on "finish", as in ChoiceResult
    stop_reason: str | int | None = None  # on "finish"


async def collect(gen: Generation, worker: EngineWorker) -> list[ChoiceResult]:
    """Every choice's answer once the request is done; a failed choice raises its API error."""
    stop_reasons: dict[int, str | int | None] = {}
    async for out in gen.outputs(worker):
        if out.finished:
            stop_reasons[out.index] = out.stop_reason
    if any(c.finish_reason == "error" for c in gen.choices):
        raise gen.failure()
    results = []
    for i, c in enumerate(gen.choices):
        text, calls, parser = "".join(c.text), [], gen.parser()
        if parser is not None:
            events = parser.feed(text) + parser.finish()
            text = "".join(e.text for e in events if e.kind == "content")
            calls = parser.calls
        results.append(ChoiceResult(text, calls, finish_reason(c.finish_reason, bool(calls)), stop_reasons.get(i),
                                    c.logprobs, c.num_tokens))
    return results


async def pieces(gen: Generation, worker: EngineWorker) -> AsyncIterator[Piece]:
    """The answer as it grows, every choice interleaved; a failed choice raises its API error."""
    parsers = [gen.parser() for _ in range(gen.request.params.n)]
    async for out in gen.outputs(worker):
        if out.finished and out.finish_reason == "error":
            raise gen.failure()
        logprobs = to_logprobs(out.logprobs or []) if gen.wants_logprobs else None
        parser = parsers[out.index]
        if parser is None:
            found = [Piece(out.index, "content", out.text)] if out.text else []
        else:
            events = parser.feed(out.text) + (parser.finish() if out.finished else [])
            found = [Piece(out.index, e.kind, e.text, e.index, e.call_id, e.name) for e in events]
        if logprobs and not found:
            found = [Piece(out.index, "content", "")]
        for k, piece in enumerate(found):
            yield replace(piece, logprobs=logprobs) if k == 0 and logprobs else piece
        if out.finished:
            has_calls = parser is not None and bool(parser.calls)
            yield Piece(out.index, "finish", finish_reason=finish_reason(out.finish_reason, has_calls),
                        stop_reason=out.stop_reason)


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and reason == "stop" else reason
