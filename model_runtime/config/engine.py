"""EngineConfig: the runtime knobs of the generation engine (not part of the checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaultInjection:
    """TESTS ONLY: make the engine's LM forward fail on purpose (fault-isolation tests).

    The fault is raised inside the model (before its last decoder layer), so earlier layers have
    already written to the KV cache, as a real mid-forward failure would.
    """

    poison_request_ids: frozenset[str] = frozenset()  # a forward whose batch holds one of these raises
    poison_phases: frozenset[str] = frozenset({"prefill", "decode"})  # where the poison acts
    oom_over_rows: int | None = None  # a forward over more rows than this raises torch.OutOfMemoryError
    fatal_at_step: int | None = None  # the forward of this engine step (from 1) raises a fatal device error


@dataclass(frozen=True)
class EngineConfig:
    """Runtime knobs of the generation engine (not part of the checkpoint)."""

    max_num_seqs: int = 32  # rows in one running batch (each of a request's n choices is a row)
    max_model_len: int | None = None  # None: the checkpoint's context length
    seed: int = 0  # seeds the choice of seeds for requests that give none
    max_prefill_tokens: int = 8192  # padded prompt tokens (rows x longest) prefilled in one step
    encoder_cache_bytes: int = 512 * 2**20  # encoded media kept for reuse (LRU); 0 disables it
    split_prefill_tokens: int = 512  # CPU: prefill rows one by one when every new prompt is this long
    fault_injection: FaultInjection | None = None  # tests only

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len={self.max_model_len}: must be >= 16")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens={self.max_prefill_tokens}: must be >= 1")
        if self.split_prefill_tokens < 1:
            raise ValueError(f"split_prefill_tokens={self.split_prefill_tokens}: must be >= 1")
        if self.encoder_cache_bytes < 0:
            raise ValueError(f"encoder_cache_bytes={self.encoder_cache_bytes}: must be >= 0")
