"""Next-token choice from logits: greedy, or temperature + top_p with an optional per-request seed."""

from __future__ import annotations

import torch

from model_runtime.engine.request import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    # logits: [B, V] float32
    out: list[int] = []
    for row, p, gen in zip(logits, params, generators, strict=True):
        if p.is_greedy:
            out.append(int(torch.argmax(row)))
            continue
        probs = torch.softmax(row / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < p.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out
