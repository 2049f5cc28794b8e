"""`EngineStats`: the engine's state and cumulative counters as one immutable snapshot.

The worker takes a snapshot after every step; metrics and health probes read it from any thread
(the server's Prometheus gauges, counters and histograms are computed from it at scrape time).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

STEP_TOKEN_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)  # tokens-per-step buckets


@dataclass(frozen=True)
class TokenHistogram:
    """Cumulative histogram of a per-step token count (Prometheus buckets: `counts[i]` <= bounds[i])."""

    bounds: tuple[int, ...]
    counts: tuple[int, ...]  # observations <= bounds[i], cumulative; one more for +Inf
    total: int  # sum of observations
    num: int  # observations

    @classmethod
    def empty(cls, bounds: tuple[int, ...]) -> TokenHistogram:
        return cls(bounds, (0,) * (len(bounds) + 1), 0, 0)

    def observe(self, value: int) -> TokenHistogram:
        first = bisect.bisect_left(self.bounds, value)
        counts = tuple(c + (i >= first) for i, c in enumerate(self.counts))
        return TokenHistogram(self.bounds, counts, self.total + value, self.num + 1)


@dataclass
class EngineCounters:
    """The engine's cumulative counts and per-step histograms (engine thread; copied into each snapshot)."""

    num_steps: int = 0
    num_prefill_steps: int = 0  # steps that computed prompt positions
    num_decode_steps: int = 0  # steps that only decoded
    num_prefill_tokens: int = 0  # prompt positions computed (prefix-cache hits excluded)
    num_generation_tokens: int = 0  # tokens sampled
    num_errors: int = 0  # choices finished with "error"
    num_interactive_tokens: int = 0  # positions computed for interactive requests (prompt and decode)
    num_batch_tokens: int = 0  # positions computed for batch requests: their share of the engine's work
    step_prompt_tokens: TokenHistogram = field(default_factory=lambda: TokenHistogram.empty(STEP_TOKEN_BOUNDS))
    step_decode_tokens: TokenHistogram = field(default_factory=lambda: TokenHistogram.empty(STEP_TOKEN_BOUNDS))
    step_seconds: float = 0.0  # time in step()
    last_step_seconds: float = 0.0
    last_step_time: float = 0.0  # time.time() when the last step ended; 0 before the first

    def count_step(self, num_prompt_tokens: int, num_decode_rows: int) -> None:
        """A step's forward ran `num_prompt_tokens` prompt positions and `num_decode_rows` decode rows."""
        self.num_prefill_steps += num_prompt_tokens > 0
        self.num_decode_steps += num_prompt_tokens == 0
        if num_prompt_tokens:
            self.step_prompt_tokens = self.step_prompt_tokens.observe(num_prompt_tokens)
        if num_decode_rows:
            self.step_decode_tokens = self.step_decode_tokens.observe(num_decode_rows)

    def end_step(self, seconds: float, now: float) -> None:
        self.last_step_seconds = seconds
        self.step_seconds += seconds
        self.last_step_time = now


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health; counters are cumulative since start. Read from any thread."""

    num_running: int  # requests with sequences holding KV blocks
    num_waiting: int  # requests queued for admission (none of their sequences running)
    batch_size: int  # running sequences (each of n choices is one)
    num_kv_tokens: int  # positions held in KV blocks, shared prefixes counted once
    num_kv_slots: int  # positions the blocks in use have room for
    kv_cache_bytes: int  # bytes of the blocks in use
    kv_cache_capacity_bytes: int  # the whole preallocated cache
    kv_blocks_total: int
    kv_blocks_used: int  # held by a sequence
    kv_blocks_cached: int  # free but still findable by the prefix cache (evicted least recently used first)
    kv_cache_usage: float  # used / total blocks
    block_size: int
    prefix_cache_queried_tokens: int  # prompt positions looked up in the prefix cache
    prefix_cache_hit_tokens: int  # of which found
    num_preemptions: int  # sequences sent back to wait (their KV recomputed later) for lack of blocks
    step_prompt_tokens: TokenHistogram  # prompt positions computed per step (steps that compute some)
    step_decode_tokens: TokenHistogram  # decode tokens per step (steps that decode)
    last_step_time: float  # time.time() when the last step ended; 0 before the first
    last_step_seconds: float
    num_steps: int
    num_prefill_steps: int  # steps that computed prompt positions
    num_decode_steps: int  # steps that only decoded
    num_prefill_tokens: int  # prompt positions computed (text + media rows; prefix-cache hits excluded)
    num_generation_tokens: int  # tokens sampled
    step_seconds: float  # time in step()
    forward_seconds: float  # of which LM forwards
    encoder_seconds: float  # of which media encoder work
    encoder_cache_queries: int  # media items looked up
    encoder_cache_hits: int
    encoder_cache_entries: int
    encoder_cache_bytes: int
    num_errors: int  # choices finished with "error"
    num_interactive_tokens: int  # positions computed for interactive requests (prompt and decode)
    num_batch_tokens: int  # positions computed for batch requests (Priority.BATCH)
    num_out_of_memory: int  # out-of-memory errors recovered by splitting the batch
    is_dead: bool
    dead_reason: str | None
