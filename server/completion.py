"""Engine outputs of one request -> a ChatCompletion or SSE chunks, with usage, logprobs and metrics.

`Generation` consumes the worker's `RequestOutput`s for all `n` choices of one request and keeps
what both response shapes need; `collect()` builds the one-shot response, `stream()` the SSE
events (a role chunk per choice, content deltas, a finish chunk per choice, the optional usage
chunk, then `[DONE]`; a failure after the first byte becomes a final error event). With tools,
each choice's text goes through a `CallParser` (tools.py): calls become `tool_calls` (deltas when
streamed) and a stopped answer with calls finishes with "tool_calls". Every per-request series of
the metrics is observed here, once, when the request ends. Everything it knows of the engine
arrives in the outputs (a frozen message per step, through the worker's queue): whether a failure
was the engine stopping is the failing output's own flag, never a look at the engine's state.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from model_runtime import EngineDeadError, EngineDrainingError, EngineWorker, RequestOutput, TokenLogprobs
from model_runtime import Request as EngineRequest
from server.errors import APIError, InternalError, NotReady, from_runtime
from server.lifecycle import Ticket
from server.media.loader import LoadedMedia
from server.metrics import Metrics
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    PromptTokensDetails,
    TokenLogprob,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from server.tools import CallEvent, CallParser

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


async def collect(gen: Generation, worker: EngineWorker) -> ChatCompletion:
    async for _ in gen.outputs(worker):
        pass
    if any(c.finish_reason == "error" for c in gen.choices):
        raise gen.failure()
    choices = []
    for i, c in enumerate(gen.choices):
        text, calls, parser = "".join(c.text), None, gen.parser()
        if parser is not None:
            events = parser.feed(text) + parser.finish()
            text = "".join(e.text for e in events if e.kind == "content")
            calls = [ToolCallOut(id=k["id"], function=FunctionCall(name=k["name"], arguments=k["arguments"]))
                     for k in parser.calls] or None
        choices.append(Choice(
            index=i, message=AssistantMessage(content=text if text or not calls else None, tool_calls=calls),
            finish_reason=_finish_reason(c.finish_reason, bool(calls)),
            logprobs=ChoiceLogprobs(content=c.logprobs) if gen.wants_logprobs else None))
    return ChatCompletion(id=gen.request.request_id, created=gen.created, model=gen.model_name, choices=choices,
                          usage=gen.usage(), media=gen.media())


async def stream(gen: Generation, worker: EngineWorker, include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None, media: list | None = None) -> str:
        c = ChatCompletionChunk(id=gen.request.request_id, created=gen.created, model=gen.model_name,
                                choices=choices, usage=usage, media=media)
        exclude = {"media"} if media is None else set()
        if usage is None and not include_usage:
            exclude.add("usage")
        return f"data: {c.model_dump_json(exclude=exclude)}\n\n"

    error: APIError | None = None
    parsers = [gen.parser() for _ in range(gen.request.params.n)]
    try:
        for i in range(gen.request.params.n):
            yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        finished = 0
        async for out in gen.outputs(worker):
            if out.finished and out.finish_reason == "error":
                error = gen.failure()
                break
            logprobs = ChoiceLogprobs(content=to_logprobs(out.logprobs or [])) if gen.wants_logprobs else None
            parser = parsers[out.index]
            if parser is None:
                deltas = [Delta(content=out.text)] if out.text else []
            else:
                deltas = _deltas(parser.feed(out.text) + (parser.finish() if out.finished else []))
            if logprobs and logprobs.content and not deltas:
                deltas = [Delta(content="")]
            for k, delta in enumerate(deltas):
                yield chunk([ChunkChoice(index=out.index, delta=delta, logprobs=logprobs if k == 0 else None)])
            if out.finished:
                finished += 1
                is_last = finished == gen.request.params.n and not include_usage
                reason = _finish_reason(out.finish_reason, parser is not None and bool(parser.calls))
                yield chunk([ChunkChoice(index=out.index, delta=Delta(), finish_reason=reason)],
                            media=gen.media() if is_last else None)
    except APIError as e:
        error = e
    except Exception as e:
        log.exception("request %s failed while streaming", gen.request.request_id)
        error = from_runtime(e)
    if error is not None:
        gen.metrics.errors.labels(code=error.code).inc()
        yield f"data: {json.dumps(error.body())}\n\n"
    elif include_usage:
        yield chunk([], usage=gen.usage(), media=gen.media())
    yield "data: [DONE]\n\n"


def _finish_reason(reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and reason == "stop" else reason


def _deltas(events: list[CallEvent]) -> list[Delta]:
    out = []
    for e in events:
        if e.kind == "content":
            out.append(Delta(content=e.text))
        elif e.kind == "call":
            out.append(Delta(tool_calls=[ToolCallDelta(index=e.index, id=e.call_id, type="function",
                                                       function=FunctionCallDelta(name=e.name, arguments=""))]))
        else:
            out.append(Delta(tool_calls=[ToolCallDelta(index=e.index, function=FunctionCallDelta(arguments=e.text))]))
    return out
