"""What model work costs, in floating-point operations, from the checkpoint's dimensions alone.

The engine plans each step within a token budget (docs/ENGINE.md): a prompt token costs one
token, plus the attention over the context before it; a slice of vision-tower work costs what
the language model would spend on as many FLOPs. These are matrix-multiply counts (2 per
multiply-add) of the layers' weights and of attention; norms, activations and embeddings are
left out. Nothing here touches a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_runtime.config import LlavaConfig


def _head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


@dataclass(frozen=True)
class LanguageCost:
    token_flops: float  # one token through every decoder layer's weights
    pair_flops: float  # one (query, key) pair of attention over every layer

    @classmethod
    def of(cls, text_config) -> LanguageCost:
        h, inter, layers = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
        heads, kv_heads, dh = text_config.num_attention_heads, text_config.num_key_value_heads, _head_dim(text_config)
        per_layer = h * (heads + 2 * kv_heads) * dh + heads * dh * h + 3 * h * inter  # qkv, o, gated MLP
        return cls(token_flops=2.0 * per_layer * layers, pair_flops=4.0 * heads * dh * layers)

    def chunk_tokens(self, num_tokens: int, context: int) -> float:
        """`num_tokens` prompt tokens after `context` computed ones, in tokens at zero context."""
        pairs = num_tokens * context + num_tokens * (num_tokens + 1) / 2
        return num_tokens + pairs * self.pair_flops / self.token_flops

    def max_chunk(self, budget: float, context: int, limit: int) -> int:
        """The most tokens (<= limit) whose `chunk_tokens` after `context` fit in `budget`."""
        if budget < 1 or limit < 1:
            return 0
        a = self.pair_flops / self.token_flops / 2  # cost(n) = a n^2 + b n
        b = 1 + self.pair_flops / self.token_flops * (context + 0.5)
        n = int((-b + (b * b + 4 * a * budget) ** 0.5) / (2 * a)) if a > 0 else int(budget)
        while n > 0 and self.chunk_tokens(n, context) > budget:  # float rounding
            n -= 1
        return min(n, limit)


def vision_layer_flops(cfg: LlavaConfig, num_crops: int) -> float:
    """One vision-tower encoder layer over `num_crops` crops (all their patches attend to each other)."""
    v = cfg.vision
    tokens = v.num_patches_per_side**2 + (1 if v.kind == "clip" else 0)
    per_token = 2.0 * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4.0 * tokens * v.hidden_size
    return per_token * tokens * num_crops


def audio_flops(cfg: LlavaConfig, num_chunks: int) -> float:
    """The Whisper encoder over `num_chunks` 30 s chunks (1,500 frames each)."""
    a = cfg.audio
    if a is None:
        return 0.0
    frames = 1500
    per_frame = 2.0 * (4 * a.hidden_size**2 + 2 * a.hidden_size * a.intermediate_size) + 4.0 * frames * a.hidden_size
    return per_frame * frames * a.num_hidden_layers * num_chunks
