"""The paged KV cache's tensors, and the per-step inputs of paged attention.

`KVCache` holds two tensors per decoder layer, keys and values, each [KV heads, num_blocks,
block_size, head dim], on that layer's device and in the model's dtype. They are allocated once
at start-up from a memory budget (`kv_cache_bytes`); on the CPU their pages become resident as
blocks are first used, and a block is zeroed when first handed out, so a padded read never
meets uninitialised memory. Block 0 is the zero block that pads block tables.
`paged_inputs(...)` turns the rows of one step (which positions of which sequence, in which
blocks) into `PagedAttentionInputs` for arch/attention.py, noting the tables that are one run of
consecutive ids (read in place, without a gather). Knows tensors, not requests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_runtime.arch.attention import DecodeGroup, PagedAttentionInputs, PromptChunk
from model_runtime.config.engine import KV_AUTO_CPU_BYTES, KV_AUTO_CUDA_SHARE
from model_runtime.engine.blocks import NULL_BLOCK
from model_runtime.engine.served_model import ServedModel

log = logging.getLogger(__name__)

DECODE_GROUP_SLACK = 1.25  # a decode group's padded reads stay within this x its real keys (+ a block per row)
IN_PLACE_MIN_POSITIONS = 2048  # a decode row this long whose blocks form few runs is read alone, in place
IN_PLACE_MAX_RUNS = 4


def kv_dims(text_config) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a transformers decoder config."""
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return text_config.num_hidden_layers, getattr(text_config, "num_key_value_heads", None) or heads, head_dim


def bytes_per_block(text_config, block_size: int, dtype: torch.dtype) -> int:
    layers, kv_heads, head_dim = kv_dims(text_config)
    return 2 * layers * kv_heads * block_size * head_dim * torch.empty((), dtype=dtype).element_size()


def available_memory(device: torch.device) -> int:
    """Bytes that could be allocated now: free device memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def kv_cache_bytes(setting: int | float | None, device: torch.device) -> int:
    """The cache's size from `EngineConfig.kv_cache_memory`: bytes (int), a share of what is
    available now (float in (0, 1]), or None for auto (config/engine.py's KV_AUTO_*)."""
    if isinstance(setting, int) and not isinstance(setting, bool):
        return setting
    free = available_memory(device)
    if setting is not None:
        return int(free * setting)
    if device.type == "cuda":
        return int(free * KV_AUTO_CUDA_SHARE)
    return min(KV_AUTO_CPU_BYTES, free // 2)


class KVCache:
    def __init__(self, model: ServedModel, num_blocks: int, block_size: int) -> None:
        _, kv_heads, head_dim = kv_dims(model.text_config)
        dtype = model.compute_dtype
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        for layer in model.decoder_layers:
            device = next(layer.parameters()).device  # each layer's cache beside its weights
            for store in (self.key_cache, self.value_cache):
                t = torch.empty(kv_heads, num_blocks, block_size, head_dim, dtype=dtype, device=device)
                t[:, NULL_BLOCK].zero_()
                store.append(t)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.key_cache, *self.value_cache))

    @property
    def block_bytes(self) -> int:
        return self.num_bytes // self.num_blocks

    def copy(self, source: int, targets: Sequence[int]) -> None:
        """Copy one block's keys and values (every layer) into other blocks."""
        if not targets:
            return
        index = torch.tensor(list(targets), dtype=torch.long)
        for t in (*self.key_cache, *self.value_cache):
            t.index_copy_(1, index.to(t.device), t[:, source : source + 1].expand(-1, len(targets), -1, -1))

    def zero(self, blocks: Sequence[int]) -> None:
        """Zero blocks handed out for the first time."""
        if not blocks:
            return
        index = torch.tensor(list(blocks), dtype=torch.long)
        for t in (*self.key_cache, *self.value_cache):
            t.index_fill_(1, index.to(t.device), 0)


@dataclass(frozen=True)
class StepRow:
    """One sequence's share of a step: `num_queries` positions from `start`, its blocks."""

    query_start: int  # its first token in the packed axis
    num_queries: int
    start: int  # the sequence's first position computed this step
    block_ids: Sequence[int]  # covers every position up to start + num_queries


def paged_inputs(cache: KVCache, rows: Sequence[StepRow], device: torch.device) -> PagedAttentionInputs:
    bs = cache.block_size
    slots: list[int] = []
    decode: list[StepRow] = []
    chunks: list[PromptChunk] = []
    for row in rows:
        if row.num_queries == 1:  # the common case, in plain integers
            slots.append(row.block_ids[row.start // bs] * bs + row.start % bs)
            decode.append(row)
            continue
        length = row.start + row.num_queries
        table = list(row.block_ids[: -(-length // bs)])
        for p in range(row.start, length):
            slots.append(table[p // bs] * bs + p % bs)
        mask = None
        if row.start:  # query i sees positions up to start + i
            mask = torch.arange(length)[None, :] <= (row.start + torch.arange(row.num_queries))[:, None]
        chunks.append(PromptChunk(row.query_start, row.num_queries, length, torch.tensor(table, device=device),
                                  _to(mask, device), first_block=_one_run_start(table)))
    return PagedAttentionInputs(
        cache.key_cache, cache.value_cache, torch.tensor(slots, dtype=torch.long, device=device),
        [_decode_group(g, bs, device, runs) for g, runs in _decode_groups(decode, bs)], chunks,
    )


def _decode_groups(rows: list[StepRow], block_size: int) -> list[tuple[list[StepRow], list[tuple[int, int]] | None]]:
    """Long rows whose blocks form few runs alone, with their runs (read in place: no copy of their
    keys), the others grouped by length."""
    alone: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        if r.start + 1 >= IN_PLACE_MIN_POSITIONS:
            runs = _runs(r.block_ids[: r.start // block_size + 1])
            if len(runs) <= IN_PLACE_MAX_RUNS:
                alone[id(r)] = runs
    rest = [r for r in rows if id(r) not in alone]
    return ([([r], alone[id(r)]) for r in rows if id(r) in alone]
            + [(g, None) for g in _group_by_length(rest, block_size)])


def _group_by_length(rows: list[StepRow], block_size: int) -> list[list[StepRow]]:
    """Decode rows sorted by context length, cut into groups whose padded read stays bounded."""
    groups: list[list[StepRow]] = []
    current: list[StepRow] = []
    real = 0
    for row in sorted(rows, key=lambda r: r.start):
        length = row.start + 1
        padded = -(-length // block_size) * block_size * (len(current) + 1)  # rows sorted: this one is the longest
        if current and padded > DECODE_GROUP_SLACK * (real + length) + block_size * (len(current) + 1):
            groups.append(current)
            current, real = [], 0
        current.append(row)
        real += length
    if current:
        groups.append(current)
    return groups


def _decode_group(rows: list[StepRow], block_size: int, device: torch.device,
                  runs: list[tuple[int, int]] | None) -> DecodeGroup:
    lengths = tuple(r.start + 1 for r in rows)
    width = -(-max(lengths) // block_size)
    table = [list(r.block_ids[: -(-n // block_size)]) for r, n in zip(rows, lengths, strict=True)]
    table = [t + [NULL_BLOCK] * (width - len(t)) for t in table]
    mask = None
    if len(rows) > 1 and any(length != width * block_size for length in lengths):
        mask = (torch.arange(width * block_size)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    index = torch.tensor([r.query_start for r in rows], dtype=torch.long, device=device)
    return DecodeGroup(index, torch.tensor(table, dtype=torch.long, device=device), lengths, _to(mask, device),
                       None if runs is None else tuple(runs))


def _one_run_start(table: Sequence[int]) -> int | None:
    """The first block of a table of consecutive ids (a prompt chunk then reads the pool in place)."""
    runs = _runs(table)
    return runs[0][0] if len(runs) == 1 else None


def _runs(table: Sequence[int]) -> list[tuple[int, int]]:
    """A block table as runs of consecutive ids: (first id, count), in order."""
    runs: list[tuple[int, int]] = []
    for block in table:
        if runs and block == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((block, 1))
    return runs



def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)
