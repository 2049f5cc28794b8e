"""The generation engine: a synchronous `step()` = schedule -> run -> postprocess.

Each step either prefills newly admitted requests (their rows then join the running batch, the
shorter side left-padded) or decodes one token for every running row; finished and aborted rows
leave between steps, so requests join and leave at every step. A failing forward is retried row
by row (in halves after an out-of-memory error) so only the culprit fails; an unrecoverable
device error finishes everything with "error" and marks the engine dead. No threads here
(`worker.py` drives `step()`); nothing of HTTP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from model_runtime.config import EngineConfig
from model_runtime.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from model_runtime.engine.kv import BatchCache, concat
from model_runtime.engine.request import (
    FINISH_REASONS,
    Logprob,
    Request,
    RequestMetrics,
    RequestOutput,
    RequestStatus,
    SamplingParamsError,
    Sequence,
    TokenLogprobs,
)
from model_runtime.engine.runner import ModelRunner, is_fatal, is_out_of_memory
from model_runtime.engine.sampler import SamplingRow, choice_generator, sample
from model_runtime.engine.scheduler import Scheduler, SchedulerOutput

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine hit an unrecoverable device error (or its thread stopped): no request can be served."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health; counters are cumulative since start. Read from any thread."""

    num_running: int  # requests with rows in the running batch
    num_waiting: int  # requests queued for admission
    batch_size: int  # rows in the running batch (each of n choices is a row)
    num_kv_tokens: int  # real tokens held in the KV cache
    num_kv_slots: int  # rows x columns of the padded cache (what its memory holds)
    kv_cache_bytes: int
    last_step_time: float  # time.time() when the last step ended; 0 before the first
    last_step_seconds: float
    num_steps: int
    num_prefill_steps: int
    num_decode_steps: int
    num_prefill_tokens: int  # prompt tokens prefilled (text + media rows)
    num_generation_tokens: int  # tokens sampled
    step_seconds: float  # time in step()
    forward_seconds: float  # of which LM forwards
    encoder_seconds: float  # of which media encoder calls
    encoder_cache_queries: int  # media items looked up
    encoder_cache_hits: int
    encoder_cache_entries: int
    encoder_cache_bytes: int
    num_errors: int  # choices finished with "error"
    num_out_of_memory: int  # out-of-memory errors recovered by splitting the batch
    is_dead: bool
    dead_reason: str | None


class Engine:
    def __init__(self, model, tokenizer, eos_token_ids, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = self.config.max_model_len or getattr(model.config, "max_position_embeddings", None)
        self.runner = ModelRunner(model, self.config)
        self.scheduler = Scheduler(self.config.max_num_seqs, self.config.max_prefill_tokens)
        self.batch: BatchCache | None = None  # rows aligned with scheduler.running
        self.requests: dict[str, Request] = {}  # unfinished
        self.choices: dict[str, list[Sequence]] = {}  # request id -> its rows, once prefilled
        self.max_decode_rows = self.config.max_num_seqs  # halved after an out-of-memory error
        self.dead_reason: str | None = None
        self._texts = TokenTexts(tokenizer)
        self._seed_source = torch.Generator().manual_seed(self.config.seed)
        self._counters = dict.fromkeys(
            ("num_steps", "num_prefill_steps", "num_decode_steps", "num_prefill_tokens", "num_generation_tokens",
             "num_errors", "num_out_of_memory"), 0)
        self._step_seconds = 0.0
        self._last_step_time = 0.0
        self._last_step_seconds = 0.0

    @property
    def is_dead(self) -> bool:
        return self.dead_reason is not None

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if self.is_dead:
            raise EngineDeadError(f"the engine is dead: {self.dead_reason}")
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if request.params.n > self.config.max_num_seqs:
            raise SamplingParamsError("n", f"{request.params.n}: at most {self.config.max_num_seqs} here")
        self.requests[request.request_id] = request
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> list[RequestOutput]:
        """Finish a request with "abort" (one output per unfinished choice); [] if unknown."""
        return self._finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    def abort_all(self) -> list[RequestOutput]:
        return [o for rid in list(self.requests) for o in self.abort_request(rid)]

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        batch, cache, c = self.batch, self.runner.encoder_cache, self._counters
        return EngineStats(
            num_running=len({id(s.request) for s in self.scheduler.running}),
            num_waiting=len(self.scheduler.waiting),
            batch_size=len(self.scheduler.running),
            num_kv_tokens=batch.num_tokens if batch else 0,
            num_kv_slots=batch.num_rows * batch.num_columns if batch else 0,
            kv_cache_bytes=batch.num_bytes if batch else 0,
            last_step_time=self._last_step_time,
            last_step_seconds=self._last_step_seconds,
            step_seconds=self._step_seconds,
            forward_seconds=self.runner.forward_seconds,
            encoder_seconds=self.runner.encoder_seconds,
            encoder_cache_queries=cache.num_queries,
            encoder_cache_hits=cache.num_hits,
            encoder_cache_entries=len(cache),
            encoder_cache_bytes=cache.num_bytes,
            is_dead=self.is_dead,
            dead_reason=self.dead_reason,
            **c,
        )

    # -- stepping ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        if self.is_dead:
            return []
        started = time.perf_counter()
        self._counters["num_steps"] += 1
        self.runner.step_index = self._counters["num_steps"]
        plan: SchedulerOutput = self.scheduler.schedule(time.monotonic())
        outputs = [o for r in plan.expired for o in self._finish_request(r.request_id, RequestStatus.FINISHED_ABORTED)]
        try:
            if plan.prefill:
                self._counters["num_prefill_steps"] += 1
                outputs += self._prefill(plan.prefill)
            elif plan.is_decode:
                self._counters["num_decode_steps"] += 1
                outputs += self._decode()
        except Exception as error:
            if not is_fatal(error):
                raise
            outputs += self._die(error)
        self._last_step_seconds = time.perf_counter() - started
        self._step_seconds += self._last_step_seconds
        self._last_step_time = time.time()
        return outputs

    def _prefill(self, requests: list[Request]) -> list[RequestOutput]:
        now = time.monotonic()
        for r in requests:
            r.scheduled_time = r.scheduled_time or now
        groups, failed = self._prefill_isolated(requests)
        outputs = [o for r, err in failed for o in self._finish_request(r.request_id, RequestStatus.FINISHED_ERROR, err)]
        if not groups:
            return outputs
        parts, logits, seqs = [], [], []
        for group, group_logits, part, reports in groups:
            rows = [i for i, r in enumerate(group) for _ in range(r.params.n)]
            if len(rows) != len(group):
                part.select(rows)  # n choices share the prefilled prompt
            parts.append(part)
            logits.append(group_logits[rows])
            for request, report in zip(group, reports, strict=True):
                request.media_cache_hits = tuple(report.cache_hits)
                request.encoder_seconds = report.encoder_seconds
                self._counters["num_prefill_tokens"] += request.num_prompt_tokens
                seqs += self._start(request)
        batch = concat(parts)
        step_outputs, keep = self._append_tokens(seqs, torch.cat(logits))
        if keep:
            if len(keep) != len(seqs):
                batch.select(keep)
            self.scheduler.running += [seqs[i] for i in keep]
            self.batch = batch if self.batch is None else concat([self.batch, batch])
        return outputs + step_outputs

    def _prefill_isolated(self, requests: list[Request]):
        """Prefill; on a failure retry in halves (out of memory) or one by one, so only culprits fail."""
        try:
            logits, batch, reports = self.runner.prefill(requests)
            return [(requests, logits, batch, reports)], []
        except Exception as error:
            if is_fatal(error):
                raise
            if len(requests) == 1:
                log.error("prefill failed for %s", requests[0].request_id, exc_info=error)
                return [], [(requests[0], _describe(error))]
            chunks = self._split(requests, error)
            log.warning("prefill of %d requests failed (%s); retrying in %d parts",
                        len(requests), type(error).__name__, len(chunks))
        groups, failed = [], []
        for chunk in chunks:
            g, f = self._prefill_isolated(chunk)
            groups += g
            failed += f
        return groups, failed

    def _decode(self) -> list[RequestOutput]:
        seqs = self.scheduler.running
        size = self.max_decode_rows
        if len(seqs) <= size:
            groups, failed = self._decode_isolated(self.batch, seqs)
        else:
            groups, failed = [], []
            for start in range(0, len(seqs), size):
                rows = list(range(start, min(start + size, len(seqs))))
                g, f = self._decode_isolated(self.batch.take(rows), seqs[start : start + size])
                groups += g
                failed += f
        outputs = []
        for seq, err in failed:
            outputs += self._finish_sequence(seq, RequestStatus.FINISHED_ERROR, error=err, drop_row=False)
        if not groups:
            self.scheduler.running, self.batch = [], None
            return outputs
        seqs = [s for group, _, _ in groups for s in group]
        batch = concat([part for _, _, part in groups])
        step_outputs, keep = self._append_tokens(seqs, torch.cat([logits for _, logits, _ in groups]))
        self.scheduler.running = [seqs[i] for i in keep]
        if not keep:
            self.batch = None
        else:
            if len(keep) != len(seqs):
                batch.select(keep)
            self.batch = batch
        return outputs + step_outputs

    def _decode_isolated(self, batch: BatchCache, seqs: list[Sequence]):
        try:
            tokens = [s.output_ids[-1] for s in seqs]
            logits = self.runner.decode(batch, tokens, [s.request.request_id for s in seqs])
            return [(seqs, logits, batch)], []
        except Exception as error:
            if is_fatal(error):
                raise
            if len(seqs) == 1:
                log.error("decode failed for %s", seqs[0].row_id, exc_info=error)
                return [], [(seqs[0], _describe(error))]
            if is_out_of_memory(error):
                self.max_decode_rows = max(1, min(self.max_decode_rows, len(seqs) // 2))
            chunks = self._split(list(range(len(seqs))), error)
            log.warning("decode of %d rows failed (%s); retrying in %d parts",
                        len(seqs), type(error).__name__, len(chunks))
        groups, failed = [], []
        for rows in chunks:
            g, f = self._decode_isolated(batch.take(rows), [seqs[i] for i in rows])
            groups += g
            failed += f
        return groups, failed

    def _split(self, items: list, error: Exception) -> list[list]:
        if is_out_of_memory(error):
            self._counters["num_out_of_memory"] += 1
            self.scheduler.max_num_seqs = max(1, min(self.scheduler.max_num_seqs, len(items) // 2))
            half = len(items) // 2
            return [items[:half], items[half:]]
        return [[item] for item in items]

    # -- postprocessing ---------------------------------------------------------------------
    def _append_tokens(self, seqs: list[Sequence], logits: torch.Tensor) -> tuple[list[RequestOutput], list[int]]:
        """Sample one token per row; returns the outputs and the rows that keep running."""
        rows = [
            SamplingRow(s.request.params, s.generator,
                        s.request.prompt_text_ids if s.request.params.repetition_penalty != 1 else (), s.output_ids)
            for s in seqs
        ]
        sampled = sample(logits, rows)
        now = time.monotonic()
        outputs, keep = [], []
        for i, (seq, token, lp) in enumerate(zip(seqs, sampled.token_ids, sampled.logprobs, strict=True)):
            seq.output_ids.append(token)
            seq.first_token_time = seq.first_token_time or now
            self._counters["num_generation_tokens"] += 1
            logprobs = [self._logprobs(token, lp)] if lp is not None else None
            status, stop_reason = self._check_stop(seq, token)
            if status is None:
                outputs.append(self._output(seq, [token], seq.detokenizer.take(), logprobs))
                keep.append(i)
            else:
                outputs += self._finish_sequence(seq, status, [token], logprobs, stop_reason, drop_row=False)
        return outputs, keep

    def _check_stop(self, seq: Sequence, token: int) -> tuple[RequestStatus | None, str | int | None]:
        params = seq.request.params
        if token in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED, token
        if not params.ignore_eos and token in self.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED, None
        seq.detokenizer.add(token)
        if seq.detokenizer.stop_string is not None:
            return RequestStatus.FINISHED_STOPPED, seq.detokenizer.stop_string
        if len(seq.output_ids) >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH, None
        if self.max_model_len and seq.request.num_prompt_tokens + len(seq.output_ids) >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH, None
        return None, None

    def _logprobs(self, token: int, entry: tuple[float, list[tuple[int, float]]]) -> TokenLogprobs:
        chosen, top = entry
        return TokenLogprobs(
            chosen=Logprob(token, *self._texts.get(token), chosen),
            top=tuple(Logprob(t, *self._texts.get(t), lp) for t, lp in top),
        )

    # -- lifecycle of requests and rows -----------------------------------------------------
    def _start(self, request: Request) -> list[Sequence]:
        params = request.params
        seqs = [
            Sequence(
                request, i, IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens),
                None if params.is_greedy else choice_generator(params.seed, i, self.runner.device, self._seed_source),
            )
            for i in range(params.n)
        ]
        self.choices[request.request_id] = seqs
        return seqs

    def _finish_request(self, request_id: str, status: RequestStatus, error: str | None = None) -> list[RequestOutput]:
        request = self.requests.get(request_id)
        if request is None:
            return []
        if request in self.scheduler.waiting:
            self.scheduler.remove_waiting(request)
        seqs = self.choices.get(request_id)
        if seqs is None:  # never prefilled: one final output per choice
            seqs = self._start(request)
        outputs = []
        for seq in seqs:
            if not seq.status.is_finished:
                outputs += self._finish_sequence(seq, status, error=error)
        return outputs

    def _finish_sequence(self, seq: Sequence, status: RequestStatus, ids: list[int] | None = None,
                         logprobs: list[TokenLogprobs] | None = None, stop_reason: str | int | None = None,
                         error: str | None = None, drop_row: bool = True) -> list[RequestOutput]:
        seq.status = status
        if drop_row and seq in self.scheduler.running:
            self._drop_row(self.scheduler.running.index(seq))
        if status is RequestStatus.FINISHED_ERROR:
            self._counters["num_errors"] += 1
            text = ""
        else:
            text = seq.detokenizer.take(is_final=True)
        request = seq.request
        metrics = RequestMetrics(
            arrival_time=request.arrival_time, scheduled_time=request.scheduled_time,
            first_token_time=seq.first_token_time, finished_time=time.monotonic(),
            media_cache_hits=request.media_cache_hits, encoder_seconds=dict(request.encoder_seconds),
        )
        out = self._output(seq, ids or [], text, logprobs, stop_reason=stop_reason, error=error, metrics=metrics)
        if all(s.status.is_finished for s in self.choices[request.request_id]):
            request.status = status
            del self.requests[request.request_id]
            del self.choices[request.request_id]
        return [out]

    def _drop_row(self, row: int) -> None:
        running = self.scheduler.running
        keep = [i for i in range(len(running)) if i != row]
        self.scheduler.running = [running[i] for i in keep]
        if keep:
            self.batch.select(keep)
        else:
            self.batch = None

    def _output(self, seq: Sequence, ids: list[int], text: str, logprobs: list[TokenLogprobs] | None,
                **final) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request.request_id,
            index=seq.index,
            new_token_ids=ids,
            text=text,
            finished=seq.status.is_finished,
            finish_reason=FINISH_REASONS.get(seq.status),
            num_prompt_tokens=seq.request.num_prompt_tokens,
            num_output_tokens=len(seq.output_ids),
            logprobs=logprobs,
            **final,
        )

    def _die(self, error: Exception) -> list[RequestOutput]:
        log.critical("unrecoverable device error; the engine stops", exc_info=error)
        self.dead_reason = _describe(error)
        self.scheduler.running, self.batch = [], None
        outputs = []
        for request_id in list(self.requests):
            outputs += self._finish_request(request_id, RequestStatus.FINISHED_ERROR, "the engine stopped")
        return outputs


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]
