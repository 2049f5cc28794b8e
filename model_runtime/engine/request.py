"""Request, sampling parameters and per-step outputs: the messages between server and engine.

The status enum is mapped once to OpenAI finish reasons (`FINISH_REASONS`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from model_runtime.inputs import MediaInput
from model_runtime.processing.processor import PromptInput


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stopped"  # EOS or a stop token
    FINISHED_LENGTH = "length"  # max_tokens reached
    FINISHED_ABORTED = "aborted"  # client gone, shutdown
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


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # besides the checkpoint's EOS ids
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Request:
    request_id: str
    prompt: PromptInput
    media: list[MediaInput]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    first_token_time: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    text: str  # newly decoded text (may be empty while a multi-byte character is incomplete)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" when finished
    num_prompt_tokens: int
    num_output_tokens: int
