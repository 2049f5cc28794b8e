"""`EngineStats`: the engine's state and cumulative counters as one immutable snapshot.

The worker takes a snapshot after every step; metrics and health probes read it from any thread
(the server's Prometheus gauges and counters are computed from it at scrape time).
"""

from __future__ import annotations

from dataclasses import dataclass


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
