"""EngineConfig: the runtime knobs of the generation engine (not part of the checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass

GPU_STEP_TOKENS = 4096  # max_num_batched_tokens when none is given, off the CPU
IDLE_STEP_FACTOR = 4  # a step in which no sequence decodes gets this many times the budget (no stream waits)
KV_AUTO_CPU_BYTES = 4 * 2**30  # kv_cache_memory "auto" on the CPU: at most this, and at most half of what is available
KV_AUTO_CUDA_SHARE = 0.8  # kv_cache_memory "auto" on a GPU: this share of its free memory once the model is loaded


@dataclass(frozen=True)
class EngineConfig:
    """Runtime knobs of the generation engine (not part of the checkpoint); docs/ENGINE.md."""

    max_num_seqs: int = 32  # sequences running at once (each of a request's n choices is one)
    max_model_len: int | None = None  # None: the checkpoint's context length (and at most what the KV cache holds)
    seed: int = 0  # seeds the choice of seeds for requests that give none
    # KV cache size: bytes (int), a share of the memory available at start-up (float in (0, 1]), or None:
    # auto (KV_AUTO_CUDA_SHARE of free device memory; CPU: at most KV_AUTO_CPU_BYTES and half of what is available)
    kv_cache_memory: int | float | None = None
    block_size: int = 16  # token positions per KV block
    # work per step, in prompt tokens at zero context (decode rows count one each and always run; a later
    # prompt token and a slice of encoder work count what their FLOPs are worth). None: GPU_STEP_TOKENS on a
    # GPU; on the CPU paced by time, see step_seconds
    max_num_batched_tokens: int | None = None
    # CPU, no max_num_batched_tokens: each step in which some sequence decodes is sized to last about this
    # long, from the engine's own step timings (engine/pacing.py); the longest token gap of a stream while
    # others' prompts and media are computed
    step_seconds: float = 1.5
    enable_prefix_caching: bool = True  # keep full KV blocks findable by content after their request
    encoder_cache_bytes: int = 512 * 2**20  # encoded media kept for reuse (LRU); 0 disables it

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len={self.max_model_len}: must be >= 16")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size}: must be a power of two")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 16:
            raise ValueError(f"max_num_batched_tokens={self.max_num_batched_tokens}: must be >= 16")
        if not 0.05 <= self.step_seconds <= 60:
            raise ValueError(f"step_seconds={self.step_seconds}: must be within [0.05, 60]")
        memory = self.kv_cache_memory
        if isinstance(memory, bool) or (isinstance(memory, int) and memory < 1) or (
                isinstance(memory, float) and not 0 < memory <= 1):
            raise ValueError(f"kv_cache_memory={memory!r}: bytes >= 1, a share in (0, 1], or None (auto)")
        if self.encoder_cache_bytes < 0:
            raise ValueError(f"encoder_cache_bytes={self.encoder_cache_bytes}: must be >= 0")
