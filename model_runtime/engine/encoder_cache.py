"""Encoder cache: encoded media features by content hash, least recently used first out, bounded in bytes.

The key is a BLAKE2b digest of the preprocessed media tensor's bytes, shape and dtype plus every
other field of the `MediaInput` (modality, source size, crop mode, timestamps, ...), so two items
share an entry only when the model would see exactly the same input. Never Python `hash()`
(salted per process and 64-bit). Knows `MediaInput` / `EncodedItem`, not the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict

import torch

from model_runtime.inputs import EncodedItem, MediaInput


def media_key(item: MediaInput) -> str:
    digest = hashlib.blake2b(digest_size=32)
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        digest.update(f.name.encode() + b"=")
        if isinstance(value, torch.Tensor):
            t = value.detach().contiguous().cpu()
            digest.update(f"{tuple(t.shape)}:{t.dtype}:".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
        digest.update(b";")
    return digest.hexdigest()


class EncoderCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, EncodedItem] = OrderedDict()
        self.num_bytes = 0
        self.num_queries = 0
        self.num_hits = 0
        self.num_evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> EncodedItem | None:
        """Look an item up (counted as a query, and as a hit when found)."""
        self.num_queries += 1
        item = self._entries.get(key)
        if item is not None:
            self._entries.move_to_end(key)
            self.num_hits += 1
        return item

    def count_hit(self) -> None:
        """A query answered without the cache (the same item twice in one batch is encoded once)."""
        self.num_queries += 1
        self.num_hits += 1

    def put(self, key: str, item: EncodedItem) -> None:
        size = _size(item)
        if size > self.max_bytes or key in self._entries:
            return
        while self.num_bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.num_bytes -= _size(evicted)
            self.num_evictions += 1
        self._entries[key] = item
        self.num_bytes += size


def _size(item: EncodedItem) -> int:
    return item.features.numel() * item.features.element_size()
