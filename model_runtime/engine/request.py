"""Request, sampling parameters and per-step outputs: the messages between server and engine.

A `Request` carries one prompt and its media; `SamplingParams.n` choices of it become `n`
`Sequence`s (rows of the running batch): choice 0 computes the prompt, the others then share its
full KV blocks. The status enum is mapped once to OpenAI finish reasons (`FINISH_REASONS`).
Nothing here knows tensors beyond the media inputs.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from model_runtime.engine.blocks import BlockHash, PromptLayout
from model_runtime.engine.detokenizer import IncrementalDetokenizer
from model_runtime.engine.grammar import CompiledGrammar, GrammarMatcher
from model_runtime.errors import RequestInputError
from model_runtime.inputs import EncodedItem, MediaInput
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
        # lists from JSON become tuples so params stay hashable and immutable
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        bias = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in bias))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
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
        _check(all(isinstance(s, str) and s for s in stop), "stop", "stop strings must be non-empty strings")
        _check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids", "token ids must be >= 0")
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


@dataclass(eq=False)
class Request:
    """One chat completion as the engine sees it. The server builds it; the engine owns it after."""

    request_id: str
    prompt: PromptInput
    media: list[MediaInput]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)  # time.monotonic()
    deadline: float | None = None  # time.monotonic() after which the engine aborts it
    grammar: CompiledGrammar | None = None  # the output must match it (each choice gets its own matcher)
    status: RequestStatus = RequestStatus.WAITING
    # -- the engine's state of the request (engine thread only) --
    scheduled_time: float | None = None  # when it was first scheduled
    media_keys: tuple[str, ...] = ()  # content key of each media item (encoder and prefix caches)
    layout: PromptLayout | None = None  # what fills each prompt position (text ids, media rows)
    encoded: dict[str, EncodedItem] = field(default_factory=dict)  # media rows held while the prompt is computed
    media_cache_hits: list[bool | None] = field(default_factory=list)  # per item: encoding reused (None: not yet)
    encoder_seconds: dict[str, float] = field(default_factory=dict)  # modality -> encoder work it waited on
    num_cached_tokens: int = 0  # prompt positions whose KV came from the prefix cache
    is_forked: bool = False  # choices 1..n-1 exist (after choice 0 computed the prompt)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens

    @functools.cached_property
    def prompt_text_ids(self) -> tuple[int, ...]:
        """The prompt's real token ids (sentinels left out)."""
        return tuple(t for t in self.prompt.token_ids if t >= 0)


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
    metrics: RequestMetrics | None = None  # on the final output of the choice


@dataclass(eq=False)
class Sequence:
    """One choice of a request: its tokens, its KV blocks and how far they are computed."""

    request: Request
    index: int  # choice index, 0..n-1
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None  # None for greedy choices
    matcher: GrammarMatcher | None = None  # where it stands in the request's grammar
    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    first_token_time: float | None = None
    block_ids: list[int] = field(default_factory=list)  # its KV blocks, position order
    num_computed: int = 0  # positions whose KV is in its blocks
    block_hashes: list[BlockHash] = field(default_factory=list)  # of its full blocks, as far as known
    num_registered: int = 0  # leading full blocks offered to the prefix cache

    @property
    def row_id(self) -> str:
        return f"{self.request.request_id}#{self.index}"

    @property
    def num_tokens(self) -> int:
        """Prompt positions + generated tokens (the last generated one is computed at the next step)."""
        return self.request.num_prompt_tokens + len(self.output_ids)

    @property
    def is_decoding(self) -> bool:
        return self.num_computed == self.num_tokens - 1 and self.num_computed >= self.request.num_prompt_tokens

    def token_ids(self) -> list[int]:
        """Prompt ids (sentinels for media) followed by the generated ids."""
        return list(self.request.prompt.token_ids) + self.output_ids
