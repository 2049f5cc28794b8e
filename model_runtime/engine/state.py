"""The engine's mutable state of a request and of each of its choices: engine thread only.

The server submits a frozen `Request` (request.py); `Engine.add_request` wraps it in a
`RequestState` and a `SequenceState` per choice, which only the engine thread reads or writes.
What leaves the thread is a frozen `RequestOutput` (with `RequestMetrics` built from this state).
Nothing here knows tensors beyond the media rows held while a prompt is computed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from model_runtime.engine.blocks import BlockHash, PromptLayout
from model_runtime.engine.detokenizer import IncrementalDetokenizer
from model_runtime.engine.grammar import GrammarMatcher
from model_runtime.engine.request import Request, RequestStatus
from model_runtime.inputs import EncodedItem


@dataclass(eq=False)
class RequestState:
    """What the engine knows of one request while it is unfinished, shared by its choices."""

    request: Request  # as submitted (frozen)
    media_keys: tuple[str, ...]  # content key of each media item (encoder and prefix caches)
    layout: PromptLayout  # what fills each prompt position (text ids, media rows)
    scheduled_time: float | None = None  # when it was first scheduled (time.monotonic())
    encoded: dict[str, EncodedItem] = field(default_factory=dict)  # media rows held while the prompt is computed
    media_cache_hits: list[bool | None] = field(default_factory=list)  # per item: encoding reused (None: not yet)
    encoder_seconds: dict[str, float] = field(default_factory=dict)  # modality -> encoder work it waited on
    num_cached_tokens: int = 0  # prompt positions whose KV came from the prefix cache
    is_forked: bool = False  # choices 1..n-1 exist (after choice 0 computed the prompt)

    @property
    def awaits_fork(self) -> bool:
        """Choices 1..n-1 will start from choice 0's computed prompt and have not yet."""
        return self.request.params.n > 1 and not self.is_forked

    def note_media_reuse(self, item: int, reused: bool) -> None:
        """The first time item `item`'s rows are found: reused (cache, or an encoding under way) or not."""
        if self.media_cache_hits[item] is None:
            self.media_cache_hits[item] = reused

    @functools.cached_property
    def prompt_text_ids(self) -> tuple[int, ...]:
        """The prompt's real token ids (sentinels left out)."""
        return tuple(t for t in self.request.prompt.token_ids if t >= 0)


@dataclass(eq=False)
class SequenceState:
    """One choice of a request: its tokens, its KV blocks and how far they are computed."""

    state: RequestState  # its request's, shared with the other choices
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
    def request(self) -> Request:
        return self.state.request

    @property
    def awaits_fork(self) -> bool:
        """Choice 0 of a request whose other choices will start from its computed prompt, and have not yet."""
        return self.index == 0 and self.state.awaits_fork

    @property
    def reserved_rows(self) -> int:
        """Rows this sequence keeps for others: a choice 0 that will fork keeps its n-1 choices'."""
        return self.request.params.n - 1 if self.awaits_fork else 0

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
