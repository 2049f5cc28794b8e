"""The generation engine: a synchronous `step()` = schedule -> encode -> forward -> sample.

Each step runs one token of every decoding sequence and chunks of prompts (scheduler.py) in one
packed forward over the paged KV cache (kv.py, runner.py); media are encoded in slices before
it. Requests join and leave at every step. Choice 0 of a request computes its prompt; at its
first token the other choices start from the same KV blocks. A failing forward is retried
sequence by sequence (in halves after an out-of-memory error) so only the culprit fails; an
unrecoverable device error finishes everything with "error" and marks the engine dead. No
threads here (`worker.py` drives `step()`); nothing of HTTP.
"""

from __future__ import annotations

import logging
import time

import torch

from model_runtime.arch.cost import LanguageCost, vision_layer_flops
from model_runtime.config import EngineConfig
from model_runtime.engine.blocks import BlockPool, PromptLayout, extend_hashes
from model_runtime.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from model_runtime.engine.encoder_cache import media_key
from model_runtime.engine.kv import bytes_per_block, kv_cache_bytes
from model_runtime.engine.pacing import StepPacer
from model_runtime.engine.request import (
    FINISH_REASONS,
    Logprob,
    Request,
    RequestMetrics,
    RequestOutput,
    RequestStatus,
    SamplingParamsError,
    TokenLogprobs,
)
from model_runtime.engine.runner import ForwardRow, ModelRunner, is_fatal, is_out_of_memory
from model_runtime.engine.sampler import SamplingRow, choice_generator, sample
from model_runtime.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from model_runtime.engine.state import RequestState, SequenceState
from model_runtime.engine.stats import STEP_TOKEN_BOUNDS, EngineStats, TokenHistogram

log = logging.getLogger(__name__)

MAX_CROPS_PER_UNIT = 64  # crops (or frames) in one encoder unit, at most
GPU_STEP_TOKENS = 4096
IDLE_STEP_FACTOR = 4  # the step budget's multiple when no sequence decodes


class EngineDeadError(RuntimeError):
    """The engine hit an unrecoverable device error (or its thread stopped): no request can be served."""


class Engine:
    def __init__(self, model, tokenizer, eos_token_ids, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        _check_model(model)
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        device = model.model.embed_tokens.weight.device
        self.block_size = bs = config.block_size
        per_block = bytes_per_block(model.config, bs, model.model.embed_tokens.weight.dtype)
        num_blocks = int(kv_cache_bytes(config.kv_cache_memory, device) // per_block)
        if num_blocks < 2:
            raise ValueError(f"kv_cache_memory holds {num_blocks} blocks of {per_block} bytes; at least 2 are needed")
        self.runner = ModelRunner(model, config, num_blocks)
        self.vocab_size = model.get_output_embeddings().out_features  # the logits' width
        capacity = (num_blocks - 1) * bs
        context = config.max_model_len or getattr(model.config, "max_position_embeddings", None) or capacity
        if context > capacity:
            log.warning("the KV cache holds %d tokens, fewer than the context length %d: requests are limited to %d",
                        capacity, context, capacity)
        self.max_model_len = min(context, capacity)
        self.cost = LanguageCost.of(model.config)
        self.pool = BlockPool(num_blocks, config.enable_prefix_caching)
        # the CPU's default budget is paced by time (pacing.py); a GPU's is fixed, as is a given one
        self.pacer: StepPacer | None = None
        if config.max_num_batched_tokens is None and device.type == "cpu":
            rate = _cpu_token_rate(model, self.cost)
            self.pacer = StepPacer(config.step_seconds, 1.0 / rate, idle_factor=IDLE_STEP_FACTOR)
            step_tokens = self.pacer.budget(1)
        else:
            step_tokens = config.max_num_batched_tokens or GPU_STEP_TOKENS
        self.scheduler = Scheduler(config.max_num_seqs, step_tokens, self.pool, bs, self.cost, self._resolve_media,
                                   idle_step_factor=IDLE_STEP_FACTOR)
        self._crop_layer = vision_layer_flops(model.llava_config, 1) / self.cost.token_flops  # one crop, one layer
        self.max_crops = self._max_crops()
        self.max_forward_rows = config.max_num_seqs  # halved after an out-of-memory error
        self.requests: dict[str, RequestState] = {}  # unfinished
        self.choices: dict[str, list[SequenceState]] = {}  # request id -> its sequences (choice 0 first)
        self._media_waiters: dict[str, list[RequestState]] = {}  # media key -> requests waiting for its encoding
        self.dead_reason: str | None = None
        self._texts = TokenTexts(tokenizer)
        self._seed_source = torch.Generator().manual_seed(config.seed)
        self._counters = dict.fromkeys(
            ("num_steps", "num_prefill_steps", "num_decode_steps", "num_prefill_tokens", "num_generation_tokens",
             "num_errors", "num_out_of_memory"), 0)
        self._prompt_hist = TokenHistogram.empty(STEP_TOKEN_BOUNDS)
        self._decode_hist = TokenHistogram.empty(STEP_TOKEN_BOUNDS)
        self._step_seconds = 0.0
        self._last_step_time = 0.0
        self._last_step_seconds = 0.0
        log.info("KV cache: %.2f GiB, %d blocks of %d tokens (%d tokens); %d tokens per step; prefix caching %s",
                 self.runner.kv.num_bytes / 2**30, num_blocks - 1, bs, capacity, self.scheduler.step_tokens,
                 "on" if config.enable_prefix_caching else "off")

    @property
    def is_dead(self) -> bool:
        return self.dead_reason is not None

    def _max_crops(self) -> int:
        """Crops (frames) per encoder unit: a unit (one layer of them) takes at most half a step's budget."""
        crop = self._crop_layer * self.scheduler.encoder_price
        return max(1, min(MAX_CROPS_PER_UNIT, int(self.scheduler.step_tokens / 2 / crop)))

    def _pace(self) -> None:
        """Size this step's budget from the pacer (CPU default) and the decode rows it will run."""
        if self.pacer is not None:
            num_decoding = sum(1 for seq in self.scheduler.running if seq.is_decoding)
            tokens = self.pacer.budget(num_decoding) // (1 if num_decoding else IDLE_STEP_FACTOR)
            self.scheduler.encoder_price = self.pacer.encoder_price
            if tokens != self.scheduler.step_tokens:
                self.scheduler.step_tokens = tokens
                self.max_crops = self._max_crops()

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if self.is_dead:
            raise EngineDeadError(f"the engine is dead: {self.dead_reason}")
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if request.params.n > self.config.max_num_seqs:
            raise SamplingParamsError("n", f"{request.params.n}: at most {self.config.max_num_seqs} here")
        if any(t >= self.vocab_size for t, _ in request.params.logit_bias):
            raise SamplingParamsError("logit_bias", f"token ids must be below the vocabulary size {self.vocab_size}")
        if request.num_prompt_tokens >= self.max_model_len:
            raise ValueError(f"a prompt of {request.num_prompt_tokens} tokens does not fit: at most "
                             f"{self.max_model_len - 1} here")
        keys = tuple(media_key(m) for m in request.media)
        layout = PromptLayout.from_ids(
            request.prompt.token_ids, [(k, m.num_tokens) for k, m in zip(keys, request.media, strict=True)])
        if layout.num_tokens != request.num_prompt_tokens:
            raise ValueError(f"the prompt's items make {layout.num_tokens} positions, not {request.num_prompt_tokens}")
        state = RequestState(request, keys, layout, media_cache_hits=[None] * len(request.media))
        self.requests[request.request_id] = state
        seq = self._new_sequence(state, 0)
        self.choices[request.request_id] = [seq]
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> list[RequestOutput]:
        """Finish a request with "abort" (one output per unfinished choice); [] if unknown."""
        return self._finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    def abort_all(self) -> list[RequestOutput]:
        return [o for rid in list(self.requests) for o in self.abort_request(rid)]

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def reset_prefix_cache(self) -> int:
        """Forget the idle content of the prefix cache (blocks in use stay); returns the blocks dropped."""
        return self.pool.reset_prefix_cache()

    def kv_token_count(self) -> int:
        """Positions held in KV blocks by running sequences, each shared position once."""
        filled: dict[int, int] = {}
        bs = self.block_size
        for seq in self.scheduler.running:
            for i, block in enumerate(seq.block_ids):
                n = min(bs, max(0, seq.num_computed - i * bs))
                if n > filled.get(block, 0):
                    filled[block] = n
        return sum(filled.values())

    def stats(self) -> EngineStats:
        cache, c, pool, kv = self.runner.encoder_cache, self._counters, self.pool, self.runner.kv
        running = self.scheduler.running
        return EngineStats(
            num_running=len({id(s.request) for s in running}),
            num_waiting=len({id(s.request) for s in self.scheduler.waiting} - {id(s.request) for s in running}),
            batch_size=len(running),
            num_kv_tokens=self.kv_token_count(),
            num_kv_slots=pool.num_used * self.block_size,
            kv_cache_bytes=pool.num_used * kv.block_bytes,
            kv_cache_capacity_bytes=kv.num_bytes,
            kv_blocks_total=pool.num_usable,
            kv_blocks_used=pool.num_used,
            kv_blocks_cached=pool.num_cached,
            kv_cache_usage=pool.usage,
            block_size=self.block_size,
            prefix_cache_queried_tokens=pool.num_queried_tokens,
            prefix_cache_hit_tokens=pool.num_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            step_prompt_tokens=self._prompt_hist,
            step_decode_tokens=self._decode_hist,
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
        now = time.monotonic()
        outputs = [o for r in self.scheduler.expired(now)
                   for o in self._finish_request(r.request_id, RequestStatus.FINISHED_ABORTED)]
        self._pace()
        plan: SchedulerOutput = self.scheduler.schedule()
        try:
            self.runner.kv.zero(plan.fresh_blocks)
            outputs += self._encode(plan)
            chunks = [c for c in plan.chunks if not c.seq.status.is_finished]
            for c in chunks:
                c.seq.state.scheduled_time = c.seq.state.scheduled_time or now
            if chunks:
                num_prompt = sum(c.num_tokens for c in chunks if not c.is_decode)
                num_decode = len(chunks) - sum(1 for c in chunks if not c.is_decode)
                self._counters["num_prefill_steps"] += num_prompt > 0
                self._counters["num_decode_steps"] += num_prompt == 0
                self._prompt_hist = self._prompt_hist.observe(num_prompt) if num_prompt else self._prompt_hist
                self._decode_hist = self._decode_hist.observe(num_decode) if num_decode else self._decode_hist
                outputs += self._run(chunks)
        except Exception as error:
            if not is_fatal(error):
                raise
            outputs += self._die(error)
        self._last_step_seconds = time.perf_counter() - started
        self._step_seconds += self._last_step_seconds
        if self.pacer is not None and (plan.chunks or plan.encoder_work):
            self.pacer.observe(plan.num_decode_tokens, plan.prompt_cost, self._last_step_seconds, plan.encoder_cost)
        self._last_step_time = time.time()
        return outputs

    # -- media ------------------------------------------------------------------------------
    def _resolve_media(self, seq: SequenceState) -> None:
        """Find the encoded rows of the media that `seq`'s remaining positions need, or start encoding them."""
        state = seq.state
        cache = self.runner.encoder_cache
        for i, (_, stop, key) in enumerate(state.layout.media_spans):
            if stop <= seq.num_computed or key in state.encoded:
                continue
            waiting = self._media_waiters.get(key)
            if waiting is not None:  # being encoded for this or another request: encoded once
                if state not in waiting:
                    waiting.append(state)
                    cache.count_hit()
                _first_report(state, i, True)
                continue
            found = cache.get(key)
            if found is not None:
                state.encoded[key] = found
                _first_report(state, i, True)
                continue
            job = self.runner.start_job(key, state.request.media[i], self.max_crops)
            self.scheduler.encoder_work[key] = [f / self.cost.token_flops for f in job.remaining_flops()]
            self._media_waiters[key] = [state]
            _first_report(state, i, False)

    def _encode(self, plan: SchedulerOutput) -> list[RequestOutput]:
        outputs = []
        for key, units in plan.encoder_work:
            if key not in self.runner.jobs:
                continue  # cancelled: nobody waits for it any more
            job = self.runner.jobs[key]
            try:
                item = self.runner.run_encoder(key, units)
            except Exception as error:
                if is_fatal(error):
                    raise
                log.error("encoding a %s item failed", job.item.modality, exc_info=error)
                self.scheduler.encoder_work.pop(key, None)
                for state in self._media_waiters.pop(key, []):
                    outputs += self._finish_request(state.request.request_id, RequestStatus.FINISHED_ERROR,
                                                    _describe(error))
                continue
            if item is not None:
                for state in self._media_waiters.pop(key, []):
                    state.encoded[key] = item
                    modality = job.item.modality
                    state.encoder_seconds[modality] = state.encoder_seconds.get(modality, 0.0) + job.seconds
        self.scheduler.commit_encoder_work(plan)
        return outputs

    def _release_media(self, state: RequestState) -> None:
        """Drop a request's encoded rows once none of its choices needs them any more."""
        if not state.encoded or (state.request.params.n > 1 and not state.is_forked):
            return
        last = state.layout.media_spans[-1][1]
        if all(s.num_computed >= last for s in self.choices[state.request.request_id] if not s.status.is_finished):
            state.encoded.clear()

    # -- the forward ------------------------------------------------------------------------
    def _run(self, chunks: list[ScheduledChunk]) -> list[RequestOutput]:
        groups, failed = [], []
        size = self.max_forward_rows
        for start in range(0, len(chunks), size):
            g, f = self._forward_isolated(chunks[start : start + size])
            groups += g
            failed += f
        outputs = []
        for chunk, err in failed:
            seq = chunk.seq
            if seq.index == 0 and not seq.state.is_forked:
                outputs += self._finish_request(seq.request.request_id, RequestStatus.FINISHED_ERROR, err)
            else:
                outputs += self._finish_sequence(seq, RequestStatus.FINISHED_ERROR, error=err)
        sampling: list[SequenceState] = []
        rows: list[torch.Tensor] = []
        for group, logits in groups:
            k = 0
            for chunk in group:
                seq = chunk.seq
                if seq.status.is_finished:
                    continue
                seq.num_computed = chunk.start + chunk.num_tokens
                self._register_blocks(seq)
                if not chunk.is_decode:
                    self._counters["num_prefill_tokens"] += chunk.num_tokens
                if chunk.wants_logits:
                    row = logits[k]
                    k += 1
                    if seq.index == 0 and seq.request.params.n > 1 and not seq.state.is_forked:
                        for child in [seq, *self._fork(seq)]:
                            sampling.append(child)
                            rows.append(row)
                    else:
                        sampling.append(seq)
                        rows.append(row)
                self._release_media(seq.state)
        if sampling:
            outputs += self._append_tokens(sampling, torch.stack(rows))
        return outputs

    def _forward_isolated(self, chunks: list[ScheduledChunk]):
        """Run a forward; on a failure retry in halves (out of memory) or one by one, so only culprits fail."""
        try:
            logits = self.runner.forward([self._forward_row(c) for c in chunks])
            return [(chunks, logits)], []
        except Exception as error:
            if is_fatal(error):
                raise
            if len(chunks) == 1:
                log.error("the forward failed for %s", chunks[0].seq.row_id, exc_info=error)
                return [], [(chunks[0], _describe(error))]
            if is_out_of_memory(error):
                self._counters["num_out_of_memory"] += 1
                half = len(chunks) // 2
                self.max_forward_rows = max(1, min(self.max_forward_rows, half))
                self.scheduler.max_num_seqs = max(1, min(self.scheduler.max_num_seqs, half))
                parts = [chunks[:half], chunks[half:]]
            else:
                parts = [[c] for c in chunks]
            log.warning("a forward of %d sequences failed (%s); retrying in %d parts",
                        len(chunks), type(error).__name__, len(parts))
        groups, failed = [], []
        for part in parts:
            g, f = self._forward_isolated(part)
            groups += g
            failed += f
        return groups, failed

    def _forward_row(self, chunk: ScheduledChunk) -> ForwardRow:
        seq, state = chunk.seq, chunk.seq.state
        if chunk.is_decode:
            return ForwardRow(seq.request.request_id, (seq.output_ids[-1],), (), chunk.start, 1, seq.block_ids,
                              chunk.wants_logits, is_decode=True)
        items = [state.encoded.get(k, m) for k, m in zip(state.media_keys, seq.request.media, strict=True)]
        return ForwardRow(seq.request.request_id, seq.token_ids(), items, chunk.start, chunk.num_tokens, seq.block_ids,
                          chunk.wants_logits, is_decode=False)

    def _register_blocks(self, seq: SequenceState) -> None:
        """Offer the sequence's newly full blocks to the prefix cache."""
        if not self.pool.enable_prefix_caching:
            return
        full = seq.num_computed // self.block_size
        if full <= seq.num_registered:
            return
        extend_hashes(seq.block_hashes, seq.state.layout, seq.output_ids, full * self.block_size, self.block_size)
        for i in range(seq.num_registered, full):
            self.pool.register(seq.block_ids[i], seq.block_hashes[i])
        seq.num_registered = full

    def _fork(self, seq: SequenceState) -> list[SequenceState]:
        """Choices 1..n-1 of `seq`'s request, from the KV of its computed prompt: the full blocks
        shared, the partial last block copied (or, with no free block, recomputed by the choice)."""
        state, request = seq.state, seq.request
        bs = self.block_size
        full = request.num_prompt_tokens // bs
        partial = request.num_prompt_tokens % bs
        copies: list[int] = []
        if partial and self.pool.num_free >= request.params.n - 1:
            copies, _ = self.pool.allocate(request.params.n - 1)
            self.runner.kv.copy(seq.block_ids[full], copies)
        children = []
        for i in range(1, request.params.n):
            child = self._new_sequence(state, i)
            child.block_ids = seq.block_ids[:full]
            self.pool.share(child.block_ids)
            child.num_computed = full * bs
            if copies:
                child.block_ids.append(copies[i - 1])
                child.num_computed = request.num_prompt_tokens
            child.block_hashes = seq.block_hashes[:full]
            child.num_registered = min(seq.num_registered, full)
            self.choices[request.request_id].append(child)
            self.scheduler.add_running(child)
            children.append(child)
        state.is_forked = True
        return children

    # -- postprocessing ---------------------------------------------------------------------
    def _append_tokens(self, seqs: list[SequenceState], logits: torch.Tensor) -> list[RequestOutput]:
        """Sample one token per sequence and report it (finishing those that stop)."""
        rows = [
            SamplingRow(s.request.params, s.generator,
                        s.state.prompt_text_ids if s.request.params.repetition_penalty != 1 else (), s.output_ids,
                        s.matcher)
            for s in seqs
        ]
        sampled = sample(logits, rows)
        now = time.monotonic()
        outputs = []
        for seq, token, lp in zip(seqs, sampled.token_ids, sampled.logprobs, strict=True):
            seq.output_ids.append(token)
            seq.first_token_time = seq.first_token_time or now
            self._counters["num_generation_tokens"] += 1
            logprobs = [self._logprobs(token, lp)] if lp is not None else None
            if seq.matcher is not None and not seq.matcher.accept(token):
                log.error("%s: the grammar refused token %d it allowed: %s", seq.row_id, token, seq.matcher.error)
                outputs += self._finish_sequence(seq, RequestStatus.FINISHED_ERROR, error="the grammar failed")
                continue
            status, stop_reason = self._check_stop(seq, token)
            if status is None:
                outputs.append(self._output(seq, [token], seq.detokenizer.take(), logprobs))
            else:
                outputs += self._finish_sequence(seq, status, [token], logprobs, stop_reason)
        return outputs

    def _check_stop(self, seq: SequenceState, token: int) -> tuple[RequestStatus | None, str | int | None]:
        params = seq.request.params
        if token in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED, token
        if not params.ignore_eos and token in self.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED, None
        seq.detokenizer.add(token)
        if seq.detokenizer.stop_string is not None:
            return RequestStatus.FINISHED_STOPPED, seq.detokenizer.stop_string
        if seq.matcher is not None and seq.matcher.is_finished:  # complete: it allows nothing but EOS
            return RequestStatus.FINISHED_STOPPED, None
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

    # -- lifecycle of requests and sequences ------------------------------------------------
    def _new_sequence(self, state: RequestState, index: int) -> SequenceState:
        request, params = state.request, state.request.params
        return SequenceState(
            state, index, IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens, self._texts.bytes),
            None if params.is_greedy else choice_generator(params.seed, index, self.runner.device, self._seed_source),
            request.grammar.matcher() if request.grammar is not None else None,
        )

    def _finish_request(self, request_id: str, status: RequestStatus, error: str | None = None) -> list[RequestOutput]:
        state = self.requests.get(request_id)
        if state is None:
            return []
        seqs = self.choices[request_id]
        if not state.is_forked:  # choices 1..n-1 never started: one final output each
            seqs += [self._new_sequence(state, i) for i in range(len(seqs), state.request.params.n)]
        outputs = []
        for seq in list(seqs):
            if not seq.status.is_finished:
                outputs += self._finish_sequence(seq, status, error=error)
        return outputs

    def _finish_sequence(self, seq: SequenceState, status: RequestStatus, ids: list[int] | None = None,
                         logprobs: list[TokenLogprobs] | None = None, stop_reason: str | int | None = None,
                         error: str | None = None) -> list[RequestOutput]:
        seq.status = status
        self.scheduler.remove(seq)
        if status is RequestStatus.FINISHED_ERROR:
            self._counters["num_errors"] += 1
            text = ""
        else:
            text = seq.detokenizer.take(is_final=True)
        state, request = seq.state, seq.request
        metrics = RequestMetrics(
            arrival_time=request.arrival_time, scheduled_time=state.scheduled_time,
            first_token_time=seq.first_token_time, finished_time=time.monotonic(),
            media_cache_hits=tuple(h is not False for h in state.media_cache_hits),
            encoder_seconds=dict(state.encoder_seconds), num_cached_tokens=state.num_cached_tokens,
        )
        out = self._output(seq, ids or [], text, logprobs, stop_reason=stop_reason, error=error, metrics=metrics)
        choices = self.choices[request.request_id]
        if all(s.status.is_finished for s in choices) and (state.is_forked or len(choices) == request.params.n):
            del self.requests[request.request_id]
            del self.choices[request.request_id]
            self._drop_waiter(state)
        return [out]

    def _drop_waiter(self, state: RequestState) -> None:
        """A finished request waits for no encoding; work nobody waits for any more is cancelled."""
        state.encoded.clear()
        for key in set(state.media_keys):
            waiting = self._media_waiters.get(key)
            if waiting is None or state not in waiting:
                continue
            waiting.remove(state)
            if not waiting:
                del self._media_waiters[key]
                self.runner.cancel_job(key)
                self.scheduler.encoder_work.pop(key, None)

    def _output(self, seq: SequenceState, ids: list[int], text: str, logprobs: list[TokenLogprobs] | None,
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
            is_engine_dead=self.is_dead,
            **final,
        )

    def _die(self, error: Exception) -> list[RequestOutput]:
        log.critical("unrecoverable device error; the engine stops", exc_info=error)
        self.dead_reason = _describe(error)
        outputs = []
        for request_id in list(self.requests):
            outputs += self._finish_request(request_id, RequestStatus.FINISHED_ERROR, "the engine stopped")
        return outputs


def _matmul_flops(device: torch.device, dtype: torch.dtype, rows: int, inner: int, outer: int) -> float:
    a = torch.randn(rows, inner, dtype=dtype, device=device)
    b = torch.randn(inner, outer, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * rows * inner * outer / best


def _cpu_token_rate(model, cost: LanguageCost) -> float:
    """Budget tokens per second this CPU's matmul promises: the pacer's first estimate, before any
    step has run (the CPU's speed varies a hundredfold between machines and dtypes). Timed on the
    model's own matmul shape, on 256 rows where it runs at its full rate, unless 16 rows already
    show it is slow."""
    weight = model.model.embed_tokens.weight
    inner, outer = model.config.hidden_size, model.config.intermediate_size
    flops = _matmul_flops(weight.device, weight.dtype, 16, inner, outer)
    if flops > 5e9:
        flops = _matmul_flops(weight.device, weight.dtype, 256, inner, outer)
    if weight.dtype != torch.float32:
        fp32 = _matmul_flops(weight.device, torch.float32, 16, inner, outer)
        if fp32 > 4 * flops:
            log.warning("this CPU multiplies %s matrices %.0fx slower than float32 (%.1f against %.1f GFLOP/s): "
                        "serve with --dtype float32", str(weight.dtype).removeprefix("torch."), fp32 / flops,
                        flops / 1e9, fp32 / 1e9)
    return flops / cost.token_flops


def _first_report(state: RequestState, item: int, reused: bool) -> None:
    if state.media_cache_hits[item] is None:
        state.media_cache_hits[item] = reused


def _check_model(model) -> None:
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise ValueError("sliding-window attention is not supported by the paged KV cache")
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        raise ValueError("only full-attention layers are supported by the paged KV cache")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]
