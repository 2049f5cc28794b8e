"""Request, sampling parameters and per-step outputs: the messages between server and engine.

Everything here is frozen, so the event loop and the engine thread may both read it. A `Request`
carries one prompt and its media; `SamplingParams.n` choices of it become `n` sequences (rows of
the running batch), whose mutable state the engine thread alone owns (state.py). The status enum
is mapped once to OpenAI finish reasons (`FINISH_REASONS`). Nothing here knows tensors beyond the
media inputs.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from model_runtime.engine.grammar import CompiledGrammar
from model_runtime.errors import RequestInputError
from model_runtime.inputs import MediaInput
from model_runtime.processing.processor import PromptInput

MAX_TOP_LOGPROBS = 20  # OpenAI's ceiling for `top_logprobs`
MAX_LOGIT_BIAS = 300  # OpenAI's ceiling for the entries of `logit_bias`


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stopped"  # EOS, a stop token or a stop string
    FINISHED_LENGTH = "length"  # max_tokens reached
    FINISHED_ABORTED = "aborted"  # client gone, deadline, shutdown
    FINISHED_ERROR = "error"  # the engine failed on this request

    @property
    def is_finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


class Priority(enum.IntEnum):
    """A request's class: a lower value is served first (rows, KV blocks, the step budget)."""

    INTERACTIVE = 0  # a caller waits for it
    BATCH = 1  # bulk work: runs in the capacity interactive requests leave, preempted when they need it


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class SamplingParamsError(RequestInputError):
    """A sampling parameter out of range; `param` names the field (OpenAI's error `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class UnknownAdapterError(RequestInputError):
    """A request names a LoRA adapter the engine does not hold."""


class PromptTooLongError(RequestInputError):
    """A prompt that leaves no room for one generated token in the engine's context."""


@dataclass(frozen=True)
class SamplingParams:
    """How to choose tokens for one request. Ranges follow the OpenAI API (and vLLM for extensions)."""

    max_tokens: int
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0  # smallest set of tokens whose probability mass reaches top_p, (0, 1]
    top_k: int = 0  # keep the k most likely tokens; 0 or -1: no limit
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability, [0, 1]
    presence_penalty: float = 0.0  # [-2, 2]: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # [-2, 2]: subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # > 0: CTRL-style, on prompt and generated tokens; 1 = off
    seed: int | None = None  # same seed -> same text, whatever else is in the batch
    stop: tuple[str, ...] = ()  # strings that end generation; never part of the returned text
    stop_token_ids: tuple[int, ...] = ()  # besides the checkpoint's EOS ids
    ignore_eos: bool = False  # keep going past EOS (benchmarks)
    logprobs: bool = False  # return the chosen token's log-probability
    top_logprobs: int = 0  # and the k most likely alternatives, 0..20 (needs logprobs)
    n: int = 1  # choices; the prompt is prefilled once and shared
    skip_special_tokens: bool = True  # drop special tokens from the text
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]) added to the logits

    def __post_init__(self) -> None:
        # tuples, never lists or dicts: the params stay hashable and immutable across threads
        _check(isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop), "stop",
               "stop strings must be a tuple of non-empty strings")
        _check(isinstance(self.stop_token_ids, tuple) and all(isinstance(t, int) and t >= 0
                                                               for t in self.stop_token_ids),
               "stop_token_ids", "token ids must be a tuple of ints >= 0")
        _check(isinstance(self.logit_bias, tuple) and all(isinstance(e, tuple) and len(e) == 2
                                                           for e in self.logit_bias),
               "logit_bias", "must be a tuple of (token id, bias) pairs")
        _check(self.max_tokens >= 1, "max_tokens", f"{self.max_tokens}: must be >= 1")
        _check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature",
               f"{self.temperature}: must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", f"{self.top_p}: must be in (0, 1]")
        _check(self.top_k >= -1, "top_k", f"{self.top_k}: must be >= 1, or 0 / -1 for no limit")
        _check(0 <= self.min_p <= 1, "min_p", f"{self.min_p}: must be in [0, 1]")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", f"{self.presence_penalty}: must be in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
               f"{self.frequency_penalty}: must be in [-2, 2]")
        _check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
               f"{self.repetition_penalty}: must be > 0")
        _check(0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
               f"{self.top_logprobs}: must be in [0, {MAX_TOP_LOGPROBS}]")
        _check(self.top_logprobs == 0 or self.logprobs, "top_logprobs", "needs logprobs=true")
        _check(self.n >= 1, "n", f"{self.n}: must be >= 1")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS, "logit_bias",
               f"{len(self.logit_bias)} entries: at most {MAX_LOGIT_BIAS}")
        for token, value in self.logit_bias:
            _check(token >= 0, "logit_bias", f"token id {token}: must be >= 0")
            _check(math.isfinite(value) and -100 <= value <= 100, "logit_bias",
                   f"{value} for token {token}: must be in [-100, 100]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    @property
    def has_filters(self) -> bool:
        return self.top_p < 1 or self.top_k > 0 or self.min_p > 0


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SamplingParamsError(param, message)


@dataclass(frozen=True, eq=False)
class Request:
    """One chat completion as submitted: the server builds it, nothing changes it after, so any thread
    may read it. The engine keeps its own state of the request apart (state.py, engine thread only)."""

    request_id: str
    prompt: PromptInput
    media: Sequence[MediaInput]  # in prompt order
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)  # time.monotonic()
    deadline: float | None = None  # time.monotonic() after which the engine aborts it
    grammar: CompiledGrammar | None = None  # the output must match it (each choice gets its own matcher)
    priority: Priority = Priority.INTERACTIVE
    lora: str | None = None  # the content key of the LoRA adapter it runs under (Engine.load_lora); None: the base

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one choice, on its final output (all times are time.monotonic())."""

    arrival_time: float
    scheduled_time: float | None  # None: aborted or failed before its prefill
    first_token_time: float | None
    finished_time: float
    media_cache_hits: tuple[bool, ...]  # per media item, request order: its encoding was reused (encoder cache,
    # or every row of it came from the prefix cache)
    encoder_seconds: Mapping[str, float]  # modality -> seconds of the encoder work it waited on
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def queue_time(self) -> float:
        return (self.scheduled_time or self.finished_time) - self.arrival_time

    @property
    def prefill_time(self) -> float:
        if self.scheduled_time is None or self.first_token_time is None:
            return 0.0
        return self.first_token_time - self.scheduled_time

    @property
    def decode_time(self) -> float:
        return self.finished_time - self.first_token_time if self.first_token_time is not None else 0.0


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability under the model (before sampling filters and penalties)."""

    token_id: int
    token: str  # the token's own text (may be a partial UTF-8 character: see `bytes`)
    bytes: tuple[int, ...]  # the token's raw UTF-8 bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token and the `top_logprobs` most likely tokens at its position."""

    chosen: Logprob
    top: tuple[Logprob, ...]


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one choice of one request."""

    request_id: str
    new_token_ids: list[int]
    text: str  # newly decoded text: complete characters only, stop strings withheld
    finished: bool  # this choice is done
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" when finished
    num_prompt_tokens: int
    num_output_tokens: int  # of this choice so far
    index: int = 0  # choice index, 0..n-1
    logprobs: list[TokenLogprobs] | None = None  # one per new token when params.logprobs
    stop_reason: str | int | None = None  # the stop string or stop token id that ended the choice
    error: str | None = None  # detail of an engine fault for the server log; never for clients
    is_engine_dead: bool = False  # with "error": the engine (or its worker) stopped, not only this request
    metrics: RequestMetrics | None = None  # on the final output of the choice
