"""`llava_eager`: the tower's eager attention, a few heads at a time, against transformers' eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.siglip.modeling_siglip import eager_attention_forward

from model_runtime.arch import eager_attention
from model_runtime.arch.eager_attention import TOWER_ATTN_IMPLEMENTATION, llava_eager_attention

EVERY_HEAD = 1 << 40  # a slice budget that holds every head: one call, the same operations as eager


def _qkv(batch: int, heads: int, length: int, dim: int, dtype: torch.dtype):
    """As attention modules hand them over: [B, L, H, Dh] projections viewed as [B, H, L, Dh]."""
    torch.manual_seed(0)
    return tuple(torch.randn(batch, length, heads, dim, dtype=dtype).transpose(1, 2) for _ in range(3))


def _both(query, key, value, mask=None):
    module = nn.Module().eval()
    ours, weights = llava_eager_attention(module, query, key, value, mask, scaling=0.35)
    ref, _ = eager_attention_forward(module, query, key, value, mask, scaling=0.35)
    assert weights is None and ours.shape == ref.shape == (query.shape[0], query.shape[2], *query.shape[1:2], 8)
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 29), (2, 2, 9)])
def test_one_slice_is_eager_bit_for_bit(monkeypatch, dtype, shape):
    monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", EVERY_HEAD)
    ours, ref = _both(*_qkv(*shape, 8, dtype))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("mask_shape", [(1, 1), (3, 5)])
def test_a_mask_goes_in_one_call_as_eager(monkeypatch, mask_shape):
    monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", 1)
    mask = torch.zeros(*mask_shape, 29, 29)
    mask[..., :7] = torch.finfo(torch.float32).min
    ours, ref = _both(*_qkv(3, 5, 29, 8, torch.float32), mask)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slice_bytes", [1, 3 * 29 * 29 * 4])  # one head, three heads per slice
def test_slices_equal_eager(monkeypatch, dtype, slice_bytes):
    # the same operations per (crop, head); a GEMM library may still pick another kernel for a
    # smaller batch of tiny matrices, so the bits can differ in the last place there
    monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", slice_bytes)
    ours, ref = _both(*_qkv(3, 5, 29, 8, dtype))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)


def test_slices_follow_the_byte_budget(monkeypatch):
    sizes = []
    real = eager_attention.eager_attention_forward

    def spy(module, query, *args):
        sizes.append(query.shape[0])
        return real(module, query, *args)

    monkeypatch.setattr(eager_attention, "eager_attention_forward", spy)
    monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", 3 * 29 * 29 * 4)
    _both(*_qkv(2, 8, 29, 8, torch.float32))
    assert sizes == [3, 3, 3, 3, 3, 1]  # 2 crops x 8 heads in slices of 3 (float32 scores of 29 x 29)


def test_the_siglip_tower_uses_it(monkeypatch, tiny_model):
    tower = tiny_model.model.model.vision_tower
    assert tower.config._attn_implementation == TOWER_ATTN_IMPLEMENTATION
    pixels = torch.randn(2, 3, tower.config.image_size, tower.config.image_size)
    config = tower.pass_layers[0].self_attn.config  # shared by the tower's layers
    with torch.inference_mode():
        monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", EVERY_HEAD)
        whole = tower(pixels)
        monkeypatch.setattr(eager_attention, "CPU_SCORE_SLICE_BYTES", 1)
        sliced = tower(pixels)
        config._attn_implementation = "eager"  # transformers' own, on the same weights
        try:
            ref = tower(pixels)
        finally:
            config._attn_implementation = TOWER_ATTN_IMPLEMENTATION
    assert torch.equal(whole, ref)
    torch.testing.assert_close(sliced, ref, atol=1e-6, rtol=1e-6)
