"""Next tokens for a batch of rows that each have their own sampling parameters.

Order per row: logit_bias -> penalties (repetition on prompt + output, presence and frequency on
output) -> the grammar's mask (tokens it does not allow become -inf) -> temperature -> top_k ->
top_p -> min_p -> choice. Greedy rows take the argmax of the penalised
logits. Sampling rows race exponential noise from their OWN generator (argmax p / E, E ~ Exp(1)),
one draw of V numbers per step, so a seeded row's tokens never depend on its neighbours.
Logprobs are of the raw model distribution (log_softmax of the logits, before any processing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model_runtime.engine.grammar import GrammarMatcher, refused_tokens
from model_runtime.engine.request import SamplingParams


@dataclass(frozen=True)
class SamplingRow:
    """What the sampler needs of one batch row."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy rows
    prompt_ids: Sequence[int]  # real prompt ids (no sentinels), for the repetition penalty
    output_ids: Sequence[int]  # tokens generated so far
    matcher: GrammarMatcher | None = None  # the row's grammar: only the tokens it allows may come next


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]  # per row: (chosen, [(id, logprob)] top-k)


def choice_generator(seed: int | None, index: int, device: torch.device, fallback: torch.Generator) -> torch.Generator:
    """The generator of choice `index`: choice 0 uses `seed` itself, later choices a seed derived from it."""
    if seed is None:
        value = int(torch.randint(0, 2**62, (1,), generator=fallback))
    elif index == 0:
        value = seed % 2**64
    else:
        value = int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little")
    gen = torch.Generator(device=device)
    gen.manual_seed(value)
    return gen


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
    # logits: [B, V] float32; rows under a grammar may be masked in place
    params = [r.params for r in rows]
    device = logits.device
    num_rows, vocab = logits.shape
    scores = _apply_logit_bias(logits, params) if any(p.logit_bias for p in params) else logits
    scores = _apply_penalties(scores, rows) if any(p.has_penalties for p in params) else scores
    if any(r.matcher is not None for r in rows):
        # NOTE: without logprobs (read from the raw logits) the grammar masks the logits in place
        is_raw_needed = scores is logits and any(p.logprobs for p in params)
        scores = _apply_grammars(logits.clone() if is_raw_needed else scores, rows)
    tokens = torch.empty(num_rows, dtype=torch.long, device=device)
    greedy = [i for i, p in enumerate(params) if p.is_greedy]
    sampled = [i for i, p in enumerate(params) if not p.is_greedy]
    if len(greedy) == num_rows:
        tokens = scores.argmax(dim=-1)
    elif greedy:
        index = torch.tensor(greedy, device=device)
        tokens[index] = scores[index].argmax(dim=-1)
    if sampled:
        index = torch.tensor(sampled, device=device)
        chosen = [params[i] for i in sampled]
        temperature = torch.tensor([p.temperature for p in chosen], device=device)
        x = scores[index] / temperature[:, None]
        if any(p.has_filters for p in chosen):
            x = _apply_filters(x, chosen)
        probs = torch.softmax(x, dim=-1)
        noise = torch.stack([
            torch.empty(vocab, device=device).exponential_(generator=rows[i].generator) for i in sampled
        ])
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        tokens[index] = (probs / noise).argmax(dim=-1)
    token_ids = tokens.tolist()
    return SamplerOutput(token_ids, _logprobs(logits, params, token_ids))


def _apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    x = logits.clone()
    for i, p in enumerate(params):
        if p.logit_bias:
            ids, bias = zip(*p.logit_bias, strict=True)
            x[i, list(ids)] += torch.tensor(bias, dtype=x.dtype, device=x.device)
    return x


def _apply_grammars(x: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Tokens a row's grammar does not allow become -inf, in place on `x`."""
    matchers = [(i, r.matcher) for i, r in enumerate(rows) if r.matcher is not None]
    index = [i for i, _ in matchers]
    refused = refused_tokens([m for _, m in matchers], x.shape[1])  # [R, V] bool, on the CPU
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        # NOTE: numpy's one-thread putmask beats torch's thread pool on this small op
        values = x.numpy()
        for r, i in enumerate(index):
            np.putmask(values[i], refused[r].numpy(), -np.inf)
        return x
    refused = refused.to(x.device)
    if len(index) == len(rows):
        return x.masked_fill_(refused, float("-inf"))
    picked = torch.tensor(index, device=x.device)
    x[picked] = x[picked].masked_fill_(refused, float("-inf"))
    return x


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    device = logits.device
    num_rows, vocab = logits.shape
    x = logits.clone()
    counts = _token_counts([r.output_ids for r in rows], vocab, device)  # [B, V]
    presence = torch.tensor([r.params.presence_penalty for r in rows], device=device)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows], device=device)
    x -= presence[:, None] * (counts > 0) + frequency[:, None] * counts
    repetition = torch.tensor([r.params.repetition_penalty for r in rows], device=device)
    if bool((repetition != 1).any()):
        seen = (counts > 0) | (_token_counts([r.prompt_ids for r in rows], vocab, device) > 0)
        penalised = torch.where(x > 0, x / repetition[:, None], x * repetition[:, None])
        x = torch.where(seen, penalised, x)
    return x


def _token_counts(id_lists: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    width = max((len(ids) for ids in id_lists), default=0)
    counts = torch.zeros(len(id_lists), vocab + 1, device=device)
    if width:
        # pad with `vocab` (an extra column dropped below)
        padded = torch.full((len(id_lists), width), vocab, dtype=torch.long)
        for i, ids in enumerate(id_lists):
            if ids:
                padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        counts.scatter_add_(1, padded.to(device), torch.ones(padded.shape, device=device))
    return counts[:, :vocab]


def _apply_filters(x: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    # x: [R, V] temperature-scaled scores; filtered tokens become -inf
    device = x.device
    vocab = x.shape[1]
    ordered, order = x.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=device)[None]
    # a top_k past the vocabulary keeps every token (and must not overflow an int64 tensor)
    top_k = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], device=device)
    ordered = ordered.masked_fill(rank >= top_k[:, None], float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    remove = (torch.cumsum(probs, dim=-1) - probs) >= top_p[:, None]
    min_p = torch.tensor([p.min_p for p in params], device=device)
    remove |= probs < min_p[:, None] * probs[:, :1]
    ordered = ordered.masked_fill(remove, float("-inf"))
    return torch.empty_like(x).scatter_(1, order, ordered)


def _logprobs(logits: torch.Tensor, params: Sequence[SamplingParams], token_ids: list[int]):
    wanted = [i for i, p in enumerate(params) if p.logprobs]
    out: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(params)
    if not wanted:
        return out
    index = torch.tensor(wanted, device=logits.device)
    logprobs = torch.log_softmax(logits[index], dim=-1)  # [R, V]
    chosen = logprobs.gather(1, torch.tensor([[token_ids[i]] for i in wanted], device=logits.device))
    k = max(params[i].top_logprobs for i in wanted)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    for r, i in enumerate(wanted):
        top: list[tuple[int, float]] = []
        num_top = params[i].top_logprobs
        if num_top and top_ids is not None and top_values is not None:
            top = list(zip(top_ids[r, :num_top].tolist(), top_values[r, :num_top].tolist(), strict=True))
        out[i] = (float(chosen[r, 0]), top)
    return out
