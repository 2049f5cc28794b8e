"""Batch KV cache operations for continuous batching on a LEFT-padded cache.

`BatchCache` is a transformers `DynamicCache` plus its attention mask. Row i of every tensor
belongs to running row i; each row's real tokens are contiguous and end at the last column, so
the next position of a row is its number of real tokens (positions = cumsum(mask) - 1).
Rows are merged (shorter side padded on the left), selected (dropped or repeated for n > 1) and
all-padding columns on the left trimmed. Knows tensors, not requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class BatchCache:
    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            raise ValueError("sliding-window attention layers are not supported by the batch cache")
        self.cache = cache
        self.mask = mask  # [B, L] long, 1 on real tokens

    @property
    def num_rows(self) -> int:
        return self.mask.shape[0]

    @property
    def num_columns(self) -> int:
        return self.mask.shape[1]

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens held, over all rows."""
        return int(self.mask.sum())

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def next_positions(self) -> torch.Tensor:
        """[B, 1] long: the position of each row's next token."""
        return self.mask.sum(dim=1, keepdim=True)

    def append_column(self) -> None:
        """Extend the mask by one real column for the token a decode step adds to every row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.num_rows, 1)], dim=1)

    def restore(self, num_columns: int) -> None:
        """Undo a failed forward: cut every layer (and the mask) back to `num_columns` columns."""
        self.mask = self.mask[:, :num_columns]
        for layer in self._layers():
            layer.keys = layer.keys[:, :, :num_columns]
            layer.values = layer.values[:, :, :num_columns]

    def select(self, rows: Sequence[int]) -> None:
        """Keep these rows in this order (a row may repeat: n choices of one prompt), then trim."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.trim()

    def take(self, rows: Sequence[int]) -> BatchCache:
        """A new BatchCache with copies of these rows; this one is unchanged."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        cache = DynamicCache()
        for i, layer in enumerate(self._layers()):
            cache.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), i)
        part = BatchCache(cache, self.mask.index_select(0, index))
        part.trim()
        return part

    def trim(self) -> int:
        """Drop left columns that are padding in every row; returns how many were dropped."""
        if self.num_rows == 0:
            return 0
        is_used = self.mask.any(dim=0)
        first = int(torch.argmax(is_used.to(torch.int8))) if bool(is_used.any()) else self.num_columns
        if first:
            self.mask = self.mask[:, first:]
            for layer in self._layers():
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
        return first

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", False)]

    def _tensors(self):
        for layer in self._layers():
            yield layer.keys
            yield layer.values


def concat(parts: Sequence[BatchCache]) -> BatchCache:
    """Stack batches row-wise (in order), left-padding each to the longest; `parts[0]` is reused."""
    first = parts[0]
    if len(parts) == 1:
        return first
    width = max(p.num_columns for p in parts)
    first.mask = torch.cat([_pad_left(p.mask, width, dim=1) for p in parts], dim=0)
    layers = [p._layers() for p in parts]
    if len({len(ls) for ls in layers}) != 1:
        raise ValueError("batch caches with different layer counts cannot be merged")
    for i, layer in enumerate(layers[0]):
        layer.keys = torch.cat([_pad_left(ls[i].keys, width, dim=2) for ls in layers], dim=0)
        layer.values = torch.cat([_pad_left(ls[i].values, width, dim=2) for ls in layers], dim=0)
    return first


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]  # F.pad lists dims from the last one
    return F.pad(t, pad)
