"""`llava_sdpa`: transformers' SDPA attention, plus the engine's paged attention.

Decode steps with grouped-query attention and no per-head mask fold the query heads that share a
KV head into the query-length axis, so each KV head is read once without repeating the cache or
asking SDPA for `enable_gqa`: on a 2-core CPU one layer of 8 rows x 1,512 keys with Qwen2-0.5B's
heads took 7.4 ms through `enable_gqa` and 0.5 ms folded (bench/attention_bench.py). The
arithmetic per (query head, key) pair is the same, so results equal plain SDPA up to float
reassociation.

Paged attention (`paged=PagedAttentionInputs(...)` passed through the model's forward kwargs):
the step's tokens of every sequence are packed in one row [1, T]. Each layer first writes the
new keys and values into the block pool at their slots, then reads each sequence's context back
through its block table: decode rows (one query each) in groups of similar context length, one
SDPA call per group (folded as above, the padding of a group masked); a prompt chunk with SDPA
(`enable_gqa`) over its whole context, causal from its first position. Reading in place, as views
of the pool: a long decode row whose blocks form a few runs of consecutive ids (the block pool
arranges that for long prompts; a shared prefix adds a run) gets its own matmul-softmax-matmul
over the runs, and a prompt chunk whose blocks are one run is given to SDPA as a view. Other keys
are gathered into a contiguous tensor per call (index_select over the block table): for a row of
7,300 positions the gather cost as much as the attention (bench/attention_bench.py --paged).
transformers' own paged SDPA instead puts
all sequences in one call with a block-diagonal mask, which on the CPU costs 10-20x more for
decode steps (docs/ENGINE.md, bench/attention_bench.py --paged).
Everything else goes to transformers' own SDPA function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "llava_sdpa"


@dataclass
class DecodeGroup:
    """Rows with one query each, read in one SDPA call."""

    query_index: torch.Tensor  # [n] long: each row's token in the packed axis
    block_table: torch.Tensor  # [n, nb] long: each row's blocks, padded with the zero block
    lengths: tuple[int, ...]  # each row's context length, after this step's token
    mask: torch.Tensor | None  # [n, 1, 1, nb * block_size] bool; None: every row fills its table
    runs: tuple[tuple[int, int], ...] | None = None  # one row read in place: its blocks as (first id, count) runs


@dataclass
class PromptChunk:
    """A run of one sequence's positions computed this step (several queries)."""

    query_start: int  # first token in the packed axis
    num_queries: int
    context_len: int  # positions of the sequence after this step (the chunk is the last num_queries)
    block_ids: torch.Tensor  # [nb] long
    mask: torch.Tensor | None  # [num_queries, context_len] bool; None when the chunk is the whole context
    first_block: int | None = None  # the table is blocks first_block, first_block + 1, ...


@dataclass
class PagedAttentionInputs:
    """Where one step's tokens go in the block pool and what each sequence attends to."""

    key_cache: list[torch.Tensor]  # per layer [KV, num_blocks, block_size, Dh]
    value_cache: list[torch.Tensor]
    slots: torch.Tensor  # [T] long: block * block_size + offset of each packed token
    decode_groups: list[DecodeGroup]
    prompt_chunks: list[PromptChunk]
    _moved: dict[torch.device, PagedAttentionInputs] = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> PagedAttentionInputs:
        """The index tensors on `device` (layers of a model split over devices get their own copy)."""
        if self.slots.device == device:
            return self
        moved = self._moved.get(device)
        if moved is None:
            def to(t):
                return None if t is None else t.to(device, non_blocking=True)

            moved = PagedAttentionInputs(
                self.key_cache, self.value_cache, to(self.slots),
                [DecodeGroup(to(g.query_index), to(g.block_table), g.lengths, to(g.mask), g.runs)
                 for g in self.decode_groups],
                [PromptChunk(c.query_start, c.num_queries, c.context_len, to(c.block_ids), to(c.mask), c.first_block)
                 for c in self.prompt_chunks],
            )
            self._moved[device] = moved
        return moved


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    paged: PagedAttentionInputs, scaling: float | None) -> torch.Tensor:
    """query [1, H, T, Dh], key/value [1, KV, T, Dh] of the packed tokens -> [1, T, H, Dh]."""
    layer = int(module.layer_idx)  # type: ignore[arg-type]  # set by transformers on each attention module
    key_cache, value_cache = paged.key_cache[layer], paged.value_cache[layer]
    kv_heads, num_blocks, block_size, head_dim = key_cache.shape
    paged = paged.on(query.device)
    flat = (kv_heads, num_blocks * block_size, head_dim)
    key_cache.view(flat).index_copy_(1, paged.slots, key[0].to(key_cache.dtype))
    value_cache.view(flat).index_copy_(1, paged.slots, value[0].to(value_cache.dtype))
    num_heads = query.shape[1]
    groups = num_heads // kv_heads
    out = query.new_empty(query.shape[2], num_heads, head_dim)  # [T, H, Dh]

    def gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        # blocks [n * nb] -> [KV, n * nb * block_size, Dh]
        return cache.index_select(1, blocks).view(kv_heads, -1, head_dim)

    def context(cache: torch.Tensor, blocks: torch.Tensor, first: int | None, length: int) -> torch.Tensor:
        # one sequence's keys or values [KV, length, Dh]: a view of the pool when its blocks are one run
        if first is None:
            return gather(cache, blocks)[:, :length]
        return cache[:, first : first + blocks.shape[-1]].view(kv_heads, -1, head_dim)[:, :length]

    def in_place(g: DecodeGroup, runs: tuple[tuple[int, int], ...]) -> torch.Tensor:
        # one long row over views of its runs of blocks: the scores of every run, one softmax, the
        # runs' values summed (a copy of its keys would cost as much as the attention itself)
        q = query[0].index_select(1, g.query_index).reshape(kv_heads, groups, head_dim)  # [KV, G, Dh]
        keys, values, pos = [], [], 0
        for first, count in runs:
            n = min(count * block_size, g.lengths[0] - pos)
            keys.append(key_cache[:, first : first + count].view(kv_heads, -1, head_dim)[:, :n])
            values.append(value_cache[:, first : first + count].view(kv_heads, -1, head_dim)[:, :n])
            pos += n
        scores = torch.cat([torch.matmul(q, k.to(q.dtype).transpose(1, 2)) for k in keys], dim=-1)
        probs = torch.softmax(scores.float() * (head_dim**-0.5 if scaling is None else scaling), -1).to(q.dtype)
        o = torch.matmul(probs[:, :, : values[0].shape[1]], values[0].to(q.dtype))  # [KV, G, Dh]
        pos = values[0].shape[1]
        for v in values[1:]:
            o.add_(torch.matmul(probs[:, :, pos : pos + v.shape[1]], v.to(q.dtype)))
            pos += v.shape[1]
        return o

    for g in paged.decode_groups:
        n = g.query_index.shape[0]
        if g.runs is not None:
            out.index_copy_(0, g.query_index, in_place(g, g.runs).reshape(1, num_heads, head_dim))
            continue
        q = query[0].index_select(1, g.query_index).transpose(0, 1).reshape(n, kv_heads, groups, head_dim)
        if n == 1:
            length = g.lengths[0]
            k = gather(key_cache, g.block_table[0])[None, :, :length]
            v = gather(value_cache, g.block_table[0])[None, :, :length]
        else:
            k = gather(key_cache, g.block_table.reshape(-1)).view(kv_heads, n, -1, head_dim).transpose(0, 1)
            v = gather(value_cache, g.block_table.reshape(-1)).view(kv_heads, n, -1, head_dim).transpose(0, 1)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=g.mask, scale=scaling)
        out.index_copy_(0, g.query_index, o.reshape(n, num_heads, head_dim))
    for c in paged.prompt_chunks:
        q = query[0, :, c.query_start : c.query_start + c.num_queries]  # [H, n, Dh]
        k = context(key_cache, c.block_ids, c.first_block, c.context_len)  # [KV, L, Dh]
        v = context(value_cache, c.block_ids, c.first_block, c.context_len)
        # several queries: SDPA's own GQA is the fastest here (a chunk of 50 after 6,000 positions: 13.5 ms a
        # layer against 44 ms with the KV heads repeated; bench/attention_bench.py --paged)
        o = F.scaled_dot_product_attention(q[None], k[None].to(q.dtype), v[None].to(q.dtype), attn_mask=c.mask,
                                           is_causal=c.mask is None, scale=scaling, enable_gqa=groups > 1)
        out[c.query_start : c.query_start + c.num_queries] = o[0].transpose(0, 1)
    return out[None]


def llava_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, Q, Dh]
    key: torch.Tensor,  # [B, KV, L, Dh]
    value: torch.Tensor,  # [B, KV, L, Dh]
    attention_mask: torch.Tensor | None,  # [B, 1, Q, L] bool, or None
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    paged = kwargs.get("paged")
    if paged is not None:
        return paged_attention(module, query, key, value, paged, scaling), None
    groups = getattr(module, "num_key_value_groups", 1)
    batch, num_heads, q_len, head_dim = query.shape
    if (
        q_len == 1
        and groups > 1
        and query.device.type == "cpu"
        and not module.training
        and (attention_mask is None or attention_mask.shape[1] == 1)
        and kwargs.get("position_bias") is None
    ):
        folded = query.reshape(batch, num_heads // groups, groups, head_dim)  # heads sharing a KV head as queries
        out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
        return out.reshape(batch, num_heads, 1, head_dim).transpose(1, 2).contiguous(), None  # [B, 1, H, Dh]
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, llava_sdpa_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
