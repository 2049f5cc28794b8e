"""The encoder cache: content keys that see every preprocessing setting; LRU within a byte bound; hits."""

from __future__ import annotations

import dataclasses

import torch

from model_runtime import MediaInput
from model_runtime.engine.encoder_cache import EncoderCache, media_key
from model_runtime.inputs import EncodedItem
from tests.model_runtime.engine.conftest import images, run


def item(data: torch.Tensor, **fields) -> MediaInput:
    fields.setdefault("image_size", (4, 4))
    return MediaInput(modality="image", data=data, num_tokens=4, **fields)


def test_keys_differ_for_the_same_bytes_in_another_shape_dtype_or_setting():
    data = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    base = media_key(item(data))
    assert media_key(item(data.clone())) == base  # content, not identity
    assert len(base) == 64  # a 256-bit digest
    variants = [
        item(data.reshape(1, 6, 2, 2)),  # same bytes, other shape
        item(data.view(torch.int32)),  # same bytes, other dtype
        item(data, single_crop=True),
        item(data, image_size=(4, 5)),
        item(data, timestamps=(0.0, 0.5)),
        dataclasses.replace(item(data), modality="video"),
        item(data + 1e-6),
    ]
    keys = {media_key(v) for v in variants}
    assert len(keys) == len(variants) and base not in keys


def test_lru_within_the_byte_bound():
    def encoded(value: float) -> EncodedItem:
        return EncodedItem("image", torch.full((4, 8), value, dtype=torch.float32))  # 128 bytes

    cache = EncoderCache(max_bytes=300)
    cache.put("a", encoded(1))
    cache.put("b", encoded(2))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", encoded(3))  # evicts "b", the least recently used
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.num_bytes == 256 <= cache.max_bytes and cache.num_evictions == 1
    cache.put("huge", EncodedItem("image", torch.zeros(100, 8)))  # larger than the bound: not kept
    assert cache.get("huge") is None and len(cache) == 2
    assert (cache.num_queries, cache.num_hits) == (5, 3)


def test_a_repeated_image_is_a_hit_with_identical_output(new_engine, make_request):
    engine = new_engine(enable_prefix_caching=False)  # else the prompt's KV is reused and nothing is looked up
    picture = images((80, 50), seed=5)
    first = run(engine, [make_request("first", "What is it?", picture, max_tokens=6)])["first"]
    second = run(engine, [make_request("second", "What is it?", picture, max_tokens=6)])["second"]
    assert first.final.metrics.media_cache_hits == (False,)
    assert second.final.metrics.media_cache_hits == (True,)
    assert second.final.metrics.encoder_seconds == {}  # nothing was encoded for it
    assert second.ids == first.ids
    stats = engine.stats()
    assert (stats.encoder_cache_queries, stats.encoder_cache_hits, stats.encoder_cache_entries) == (2, 1, 1)
    # the cached features are what the encoder gives for the image
    uncached = run(new_engine(encoder_cache_bytes=0, enable_prefix_caching=False), [make_request("x", "What is it?", picture, max_tokens=6)])
    assert uncached["x"].ids == first.ids


def test_same_image_with_other_preprocessing_never_shares_an_entry(new_engine, make_request):
    engine = new_engine()
    picture = images((80, 50), seed=6)
    run(engine, [make_request("anyres", "Describe.", picture, single_crop=False)])
    out = run(engine, [make_request("single", "Describe.", picture, single_crop=True)])["single"]
    assert out.final.metrics.media_cache_hits == (False,)
    assert engine.stats().encoder_cache_entries == 2
    # in one batch, the same item twice is encoded once
    both = run(engine, [make_request("p", "A.", images((33, 44), seed=9)), make_request("q", "B.", images((33, 44), seed=9))])
    assert both["p"].final.metrics.media_cache_hits == (False,) and both["q"].final.metrics.media_cache_hits == (True,)
