"""The generation engine: a synchronous `step()` = schedule -> encode -> forward -> sample -> outputs.

Each step runs one token of every decoding sequence and chunks of prompts (scheduler.py) in one
packed forward over the paged KV cache (kv.py, runner.py); media are encoded in slices before
it (media_work.py owns the encodings under way). Requests join and leave at every step. Choice 0
of a request computes its prompt; at its first token the other choices start from the same KV
blocks. A failing forward is retried sequence by sequence (in halves after an out-of-memory
error) so only the culprit fails; an unrecoverable device error finishes everything with "error"
and marks the engine dead. What a finished or stepped choice reports is built by outputs.py. No
threads here (`worker.py` drives `step()`); nothing of HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from model_runtime.arch.cost import LanguageCost, vision_layer_flops
from model_runtime.checkpoint.lora import LoraAdapter
from model_runtime.config import EngineConfig
from model_runtime.config.engine import GPU_STEP_TOKENS, IDLE_STEP_FACTOR
from model_runtime.engine.blocks import BlockPool, PromptLayout, extend_hashes
from model_runtime.engine.encoder_cache import EncoderCache, media_key
from model_runtime.engine.kv import bytes_per_block, kv_cache_bytes
from model_runtime.engine.lora_slots import LoraSlots
from model_runtime.engine.media_work import MediaWork
from model_runtime.engine.outputs import OutputBuilder, StopReason
from model_runtime.engine.pacing import StepPacer, cpu_token_rate
from model_runtime.engine.request import (
    Priority,
    PromptTooLongError,
    Request,
    RequestOutput,
    RequestStatus,
    SamplingParamsError,
    TokenLogprobs,
    UnknownAdapterError,
)
from model_runtime.engine.runner import ForwardRow, ModelRunner, is_fatal
from model_runtime.engine.sampler import SamplingRow, choice_generator, sample
from model_runtime.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from model_runtime.engine.served_model import ServedModel, served_model
from model_runtime.engine.state import RequestState, SequenceState
from model_runtime.engine.stats import EngineCounters, EngineStats

log = logging.getLogger(__name__)

MAX_CROPS_PER_UNIT = 64  # crops (or frames) in one encoder unit, at most


class EngineDeadError(RuntimeError):
    """The engine hit an unrecoverable device error (or its thread stopped): no request can be served."""


class Engine:
    def __init__(self, model, tokenizer, eos_token_ids, config: EngineConfig | None = None, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config = config or EngineConfig()
        self.clock = clock  # times each step for the pacer and the stats (tests give a fake one)
        self.model = served = served_model(model)
        _check_model(served)
        self.block_size = bs = config.block_size
        num_blocks = _num_blocks(served, config)
        self.runner = ModelRunner(served, config, num_blocks)
        self.vocab_size = served.logits_size  # the logits' width
        self.max_model_len = _context_length(served, config, (num_blocks - 1) * bs)
        self.cost = LanguageCost.of(served.text_config)
        self.pool = BlockPool(num_blocks, config.enable_prefix_caching)
        self.media = MediaWork(EncoderCache(config.encoder_cache_bytes), served.start_encoding, self.cost.token_flops)
        # the CPU's default budget is paced by time (pacing.py); a GPU's is fixed, as is a given one
        self.pacer: StepPacer | None = None
        if config.max_num_batched_tokens is None and served.compute_device.type == "cpu":
            self.pacer = StepPacer(config.step_seconds, 1.0 / cpu_token_rate(served, self.cost))
            step_tokens = self.pacer.budget(1)
        else:
            step_tokens = config.max_num_batched_tokens or GPU_STEP_TOKENS
        self.scheduler = Scheduler(config.max_num_seqs, step_tokens, self.pool, bs, self.cost, self.media,
                                   idle_step_factor=IDLE_STEP_FACTOR)
        self._crop_layer = vision_layer_flops(served.llava_config, 1) / self.cost.token_flops  # one crop, one layer
        self.media.max_crops = self._max_crops()
        self.requests: dict[str, RequestState] = {}  # unfinished
        self.choices: dict[str, list[SequenceState]] = {}  # request id -> its sequences (choice 0 first)
        self.dead_reason: str | None = None
        self.loras = LoraSlots(model, self.runner)
        self.outputs = OutputBuilder(tokenizer, eos_token_ids, self.max_model_len)
        self.counters = EngineCounters()
        self._seed_source = torch.Generator().manual_seed(config.seed)
        log.info("KV cache: %.2f GiB, %d blocks of %d tokens (%d tokens); %d tokens per step; prefix caching %s",
                 self.runner.kv.num_bytes / 2**30, num_blocks - 1, bs, (num_blocks - 1) * bs,
                 self.scheduler.step_tokens, "on" if config.enable_prefix_caching else "off")

    @property
    def is_dead(self) -> bool:
        return self.dead_reason is not None

    # -- requests ---------------------------------------------------------------------------
    def check_request(self, request: Request) -> None:
        """What this engine refuses of a request; reads only frozen state, so any thread may ask first."""
        if request.params.n > self.config.max_num_seqs:
            raise SamplingParamsError("n", f"{request.params.n}: at most {self.config.max_num_seqs} here")
        if any(t >= self.vocab_size for t, _ in request.params.logit_bias):
            raise SamplingParamsError("logit_bias", f"token ids must be below the vocabulary size {self.vocab_size}")
        if request.lora is not None and request.lora not in self.loras.slots:
            raise UnknownAdapterError(f"no LoRA adapter with key {request.lora} is loaded")
        if request.num_prompt_tokens >= self.max_model_len:
            raise PromptTooLongError(f"a prompt of {request.num_prompt_tokens} tokens does not fit: at most "
                                     f"{self.max_model_len - 1} here")

    def add_request(self, request: Request) -> None:
        if self.is_dead:
            raise EngineDeadError(f"the engine is dead: {self.dead_reason}")
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        self.check_request(request)
        keys = tuple(media_key(m) for m in request.media)
        layout = PromptLayout.from_ids(request.prompt.token_ids, keys, [m.sentinel for m in request.media],
                                       [m.num_tokens for m in request.media],
                                       seed=request.lora.encode() if request.lora is not None else None)
        if layout.num_tokens != request.num_prompt_tokens:
            raise ValueError(f"the prompt's items make {layout.num_tokens} positions, not {request.num_prompt_tokens}")
        state = RequestState(request, keys, layout, media_cache_hits=[None] * len(request.media))
        self.requests[request.request_id] = state
        seq = self._new_sequence(state, 0)
        self.choices[request.request_id] = [seq]
        self.scheduler.add(seq)

    def load_lora(self, adapter: LoraAdapter) -> None:
        """Make an adapter resident: requests with `lora=adapter.key` run under it from the next step."""
        self.loras.load(adapter)

    def unload_lora(self, key: str) -> list[RequestOutput]:
        """Drop a resident adapter; its unfinished requests finish with "error" (their outputs)."""
        outputs = [o for rid, state in list(self.requests.items()) if state.request.lora == key
                   for o in self._finish_request(rid, RequestStatus.FINISHED_ERROR, "its LoRA adapter was unloaded")]
        self.loras.unload(key)
        return outputs

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

    def stats(self) -> EngineStats:
        cache, pool, kv, running = self.media.cache, self.pool, self.runner.kv, self.scheduler.running
        return EngineStats(
            num_running=len({id(s.request) for s in running}),
            num_waiting=len({id(s.request) for s in self.scheduler.waiting} - {id(s.request) for s in running}),
            batch_size=len(running), num_kv_tokens=self.scheduler.num_kv_tokens(),
            num_kv_slots=pool.num_used * self.block_size, kv_cache_bytes=pool.num_used * kv.block_bytes,
            kv_cache_capacity_bytes=kv.num_bytes, kv_blocks_total=pool.num_usable, kv_blocks_used=pool.num_used,
            kv_blocks_cached=pool.num_cached, kv_cache_usage=pool.usage, block_size=self.block_size,
            prefix_cache_queried_tokens=pool.num_queried_tokens, prefix_cache_hit_tokens=pool.num_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions, forward_seconds=self.runner.forward_seconds,
            encoder_seconds=self.runner.encoder_seconds, encoder_cache_queries=cache.num_queries,
            encoder_cache_hits=cache.num_hits, encoder_cache_entries=len(cache), encoder_cache_bytes=cache.num_bytes,
            num_out_of_memory=self.runner.num_out_of_memory, is_dead=self.is_dead, dead_reason=self.dead_reason,
            **vars(self.counters),
        )

    # -- stepping ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        if self.is_dead:
            return []
        started = self.clock()
        outputs = self._expire()
        plan = self._schedule()
        try:
            self.runner.kv.zero(plan.fresh_blocks)
            outputs += self._encode(plan)
            sampling, logits, failed = self._forward(plan)
            outputs += failed + self._sample(sampling, logits)
        except Exception as error:
            if not is_fatal(error):
                raise
            outputs += self._die(error)
        self._end_step(plan, self.clock() - started)
        return outputs

    def _expire(self) -> list[RequestOutput]:
        """Start a step: count it, and abort the requests past their deadline."""
        self.counters.num_steps += 1
        self.runner.step_index = self.counters.num_steps
        now = time.monotonic()
        return [o for r in self.scheduler.expired(now)
                for o in self._finish_request(r.request_id, RequestStatus.FINISHED_ABORTED)]

    def _schedule(self) -> SchedulerOutput:
        """The step's plan, in a budget sized from the pacer (CPU default) and the rows that decode."""
        if self.pacer is not None:
            num_decoding = self.scheduler.num_decoding
            tokens = self.pacer.budget(num_decoding) // (1 if num_decoding else IDLE_STEP_FACTOR)
            self.scheduler.encoder_price = self.pacer.encoder_price
            if tokens != self.scheduler.step_tokens:
                self.scheduler.step_tokens = tokens
                self.media.max_crops = self._max_crops()
        return self.scheduler.schedule()

    def _end_step(self, plan: SchedulerOutput, seconds: float) -> None:
        self.counters.end_step(seconds, time.time())
        if self.pacer is not None and (plan.chunks or plan.encoder_work):
            self.pacer.observe(plan.num_decode_tokens, plan.prompt_cost, seconds, plan.encoder_cost)

    def _max_crops(self) -> int:
        """Crops (frames) per encoder unit: a unit (one layer of them) takes at most half a step's budget."""
        crop = self._crop_layer * self.scheduler.encoder_price
        return max(1, min(MAX_CROPS_PER_UNIT, int(self.scheduler.step_tokens / 2 / crop)))

    # -- media ------------------------------------------------------------------------------
    def _encode(self, plan: SchedulerOutput) -> list[RequestOutput]:
        """Run the plan's encoder units; a finished item's rows go to its waiters, a failed one fails them."""
        outputs = []
        for key, units in plan.encoder_work:
            job = self.media.jobs.get(key)
            if job is None:
                continue  # cancelled: nobody waits for it any more
            try:
                item = self.runner.run_encoder(job, units)
            except Exception as error:
                if is_fatal(error):
                    raise
                log.error("encoding a %s item failed", job.item.modality, exc_info=error)
                for state in self.media.fail(key):
                    outputs += self._finish_request(state.request.request_id, RequestStatus.FINISHED_ERROR,
                                                    _describe(error))
                continue
            if item is not None:
                self.media.finish(key, item)
        return outputs

    def _release_media(self, state: RequestState) -> None:
        """Drop a request's encoded rows once none of its choices needs them any more."""
        if not state.encoded or state.awaits_fork:
            return
        last = state.layout.media_spans[-1].stop
        if all(s.num_computed >= last for s in self.choices[state.request.request_id] if not s.status.is_finished):
            state.encoded.clear()

    # -- the forward ------------------------------------------------------------------------
    def _forward(self, plan: SchedulerOutput) -> tuple[list[SequenceState], list[torch.Tensor], list[RequestOutput]]:
        """Compute the plan's chunks: the sequences to sample (a forking choice 0 with its new choices), the
        logits row of each, and the outputs of the sequences whose forward failed."""
        chunks = [c for c in plan.chunks if not c.seq.status.is_finished]
        if not chunks:
            return [], [], []
        now = time.monotonic()
        for c in chunks:
            c.seq.state.scheduled_time = c.seq.state.scheduled_time or now
        num_prompt = sum(c.num_tokens for c in chunks if not c.is_decode)
        self.counters.count_step(num_prompt, sum(1 for c in chunks if c.is_decode))
        result = self.runner.forward_isolated([self._forward_row(c) for c in chunks])
        self.scheduler.max_num_seqs = max(1, min(self.scheduler.max_num_seqs, self.runner.max_rows))
        failed = [o for i, error in result.failed for o in self._fail(chunks[i].seq, error)]
        sampling: list[SequenceState] = []
        rows: list[torch.Tensor] = []
        for group, logits in result.groups:
            wanting = iter(logits)
            for chunk in (chunks[i] for i in group):
                seq = chunk.seq
                row = next(wanting) if chunk.wants_logits else None
                if seq.status.is_finished:
                    continue
                seq.num_computed = chunk.start + chunk.num_tokens
                self._register_blocks(seq)
                self.counters.num_prefill_tokens += 0 if chunk.is_decode else chunk.num_tokens
                if seq.request.priority == Priority.BATCH:
                    self.counters.num_batch_tokens += chunk.num_tokens
                else:
                    self.counters.num_interactive_tokens += chunk.num_tokens
                if row is not None:
                    forked = [seq, *self._fork(seq)] if seq.awaits_fork else [seq]
                    sampling += forked
                    rows += [row] * len(forked)
                self._release_media(seq.state)
        return sampling, rows, failed

    def _fail(self, seq: SequenceState, error: str) -> list[RequestOutput]:
        """A sequence's forward failed: it finishes with "error" (its whole request if it has not forked yet)."""
        if seq.awaits_fork:
            return self._finish_request(seq.request.request_id, RequestStatus.FINISHED_ERROR, error)
        return self._finish_sequence(seq, RequestStatus.FINISHED_ERROR, error=error)

    def _forward_row(self, chunk: ScheduledChunk) -> ForwardRow:
        seq, state = chunk.seq, chunk.seq.state
        lora = self.loras.slot(seq.request.lora)
        if chunk.is_decode:
            return ForwardRow(seq.request.request_id, (seq.output_ids[-1],), (), chunk.start, 1, seq.block_ids,
                              chunk.wants_logits, is_decode=True, lora_slot=lora)
        items = [state.encoded.get(k, m) for k, m in zip(state.media_keys, seq.request.media, strict=True)]
        return ForwardRow(seq.request.request_id, seq.token_ids(), items, chunk.start, chunk.num_tokens, seq.block_ids,
                          chunk.wants_logits, is_decode=False, lora_slot=lora)

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
        full, partial = divmod(request.num_prompt_tokens, bs)
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

    # -- sampling and outputs ---------------------------------------------------------------
    def _sample(self, seqs: list[SequenceState], rows: list[torch.Tensor]) -> list[RequestOutput]:
        """Sample one token per sequence and report it (finishing those that stop)."""
        if not seqs:
            return []
        sampled = sample(torch.stack(rows), [
            SamplingRow(s.request.params, s.generator,
                        s.state.prompt_text_ids if s.request.params.repetition_penalty != 1 else (), s.output_ids,
                        s.matcher)
            for s in seqs
        ])
        now = time.monotonic()
        outputs = []
        for seq, token, entry in zip(seqs, sampled.token_ids, sampled.logprobs, strict=True):
            seq.output_ids.append(token)
            seq.first_token_time = seq.first_token_time or now
            self.counters.num_generation_tokens += 1
            logprobs = self.outputs.logprobs(token, entry)
            if seq.matcher is not None and not seq.matcher.accept(token):
                log.error("%s: the grammar refused token %d it allowed: %s", seq.row_id, token, seq.matcher.error)
                outputs += self._finish_sequence(seq, RequestStatus.FINISHED_ERROR, error="the grammar failed")
                continue
            status, stop_reason = self.outputs.stop_status(seq, token)
            if status is None:
                outputs.append(self.outputs.output(seq, [token], seq.detokenizer.take(), logprobs, self.is_dead))
            else:
                outputs += self._finish_sequence(seq, status, [token], logprobs, stop_reason)
        return outputs

    # -- lifecycle of requests and sequences ------------------------------------------------
    def _new_sequence(self, state: RequestState, index: int) -> SequenceState:
        params = state.request.params
        return SequenceState(
            state, index, self.outputs.detokenizer(params),
            None if params.is_greedy else choice_generator(params.seed, index, self.runner.device, self._seed_source),
            state.request.grammar.matcher() if state.request.grammar is not None else None,
        )

    def _finish_request(self, request_id: str, status: RequestStatus, error: str | None = None) -> list[RequestOutput]:
        state = self.requests.get(request_id)
        if state is None:
            return []
        seqs = self.choices[request_id]
        if state.awaits_fork:  # choices 1..n-1 never started: one final output each
            seqs += [self._new_sequence(state, i) for i in range(len(seqs), state.request.params.n)]
        return [o for seq in list(seqs) if not seq.status.is_finished
                for o in self._finish_sequence(seq, status, error=error)]

    def _finish_sequence(self, seq: SequenceState, status: RequestStatus, ids: list[int] | None = None,
                         logprobs: list[TokenLogprobs] | None = None, stop_reason: StopReason = None,
                         error: str | None = None) -> list[RequestOutput]:
        seq.status = status
        self.scheduler.remove(seq)
        self.counters.num_errors += status is RequestStatus.FINISHED_ERROR
        out = self.outputs.final_output(seq, ids or [], logprobs, stop_reason, error, self.is_dead)
        request_id = seq.request.request_id
        choices = self.choices[request_id]
        if len(choices) == seq.request.params.n and all(s.status.is_finished for s in choices):
            del self.requests[request_id]
            del self.choices[request_id]
            self.media.release(seq.state)
        return [out]

    def _die(self, error: Exception) -> list[RequestOutput]:
        log.critical("unrecoverable device error; the engine stops", exc_info=error)
        self.dead_reason = _describe(error)
        return [o for request_id in list(self.requests)
                for o in self._finish_request(request_id, RequestStatus.FINISHED_ERROR, "the engine stopped")]


def _num_blocks(model: ServedModel, config: EngineConfig) -> int:
    per_block = bytes_per_block(model.text_config, config.block_size, model.compute_dtype)
    num_blocks = int(kv_cache_bytes(config.kv_cache_memory, model.compute_device) // per_block)
    if num_blocks < 2:
        raise ValueError(f"kv_cache_memory holds {num_blocks} blocks of {per_block} bytes; at least 2 are needed")
    return num_blocks


def _context_length(model: ServedModel, config: EngineConfig, capacity: int) -> int:
    """The longest sequence served: the configured or checkpoint context, at most what the KV cache holds."""
    context = config.max_model_len or getattr(model.text_config, "max_position_embeddings", None) or capacity
    if context > capacity:
        log.warning("the KV cache holds %d tokens, fewer than the context length %d: requests are limited to %d",
                    capacity, context, capacity)
    return min(context, capacity)


def _check_model(model: ServedModel) -> None:
    cfg = model.text_config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise ValueError("sliding-window attention is not supported by the paged KV cache")
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        raise ValueError("only full-attention layers are supported by the paged KV cache")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]
