"""What leaves the engine for each choice: stop checks, logprobs, timings and `RequestOutput`s.

After a token is sampled for a sequence, `stop_status` says whether the sequence ends there (a
stop token, EOS, a stop string its detokenizer found, a finished grammar, `max_tokens`, the
context's end) and `output` / `final_output` build what the worker delivers: new ids, complete
text, logprobs with each token's text and bytes, and on the last one the request's timings.
Engine thread only; nothing here touches tensors, blocks or the scheduler.
"""

from __future__ import annotations

import time

from model_runtime.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from model_runtime.engine.request import (
    FINISH_REASONS,
    Logprob,
    RequestMetrics,
    RequestOutput,
    RequestStatus,
    SamplingParams,
    TokenLogprobs,
)
from model_runtime.engine.state import SequenceState

StopReason = str | int | None  # the stop string or stop token id that ended a choice


class OutputBuilder:
    def __init__(self, tokenizer, eos_token_ids, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.texts = TokenTexts(tokenizer)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len

    def detokenizer(self, params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, params.stop, params.skip_special_tokens, self.texts.bytes)

    def stop_status(self, seq: SequenceState, token: int) -> tuple[RequestStatus | None, StopReason]:
        """Whether `seq` ends with `token` (just appended), and what stopped it; (None, None) goes on.
        A token that does not end the sequence by id goes to its detokenizer."""
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

    def logprobs(self, token: int, entry: tuple[float, list[tuple[int, float]]] | None) -> list[TokenLogprobs] | None:
        """The sampler's (chosen logprob, top alternatives) of one token, with their texts and bytes."""
        if entry is None:
            return None
        chosen, top = entry
        return [TokenLogprobs(
            chosen=Logprob(token, *self.texts.get(token), chosen),
            top=tuple(Logprob(t, *self.texts.get(t), lp) for t, lp in top),
        )]

    def output(self, seq: SequenceState, ids: list[int], text: str, logprobs: list[TokenLogprobs] | None,
               is_engine_dead: bool, **final) -> RequestOutput:
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
            is_engine_dead=is_engine_dead,
            **final,
        )

    def final_output(self, seq: SequenceState, ids: list[int], logprobs: list[TokenLogprobs] | None,
                     stop_reason: StopReason, error: str | None, is_engine_dead: bool) -> RequestOutput:
        """The last output of a finished choice: the text still withheld (none after an error) and its timings."""
        text = "" if seq.status is RequestStatus.FINISHED_ERROR else seq.detokenizer.take(is_final=True)
        return self.output(seq, ids, text, logprobs, is_engine_dead, stop_reason=stop_reason, error=error,
                           metrics=metrics(seq))


def metrics(seq: SequenceState) -> RequestMetrics:
    state, request = seq.state, seq.request
    return RequestMetrics(
        arrival_time=request.arrival_time, scheduled_time=state.scheduled_time,
        first_token_time=seq.first_token_time, finished_time=time.monotonic(),
        media_cache_hits=tuple(h is not False for h in state.media_cache_hits),
        encoder_seconds=dict(state.encoder_seconds), num_cached_tokens=state.num_cached_tokens,
    )
