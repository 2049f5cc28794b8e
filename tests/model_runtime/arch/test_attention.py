"""`llava_sdpa`: the folded single-query path equals transformers' SDPA attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from model_runtime.arch.attention import ATTN_IMPLEMENTATION, llava_sdpa_attention
from model_runtime.arch.eager_attention import TOWER_ATTN_IMPLEMENTATION


class _Heads(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("groups", [1, 7])
def test_decode_matches_sdpa(dtype, masked, groups):
    torch.manual_seed(0)
    batch, kv_heads, length, dim = 3, 2, 37, 16
    query = torch.randn(batch, kv_heads * groups, 1, dim, dtype=dtype)
    key = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    value = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    mask = None
    if masked:  # left padding of different lengths per row
        mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
        mask[0, ..., :5] = False
        mask[2, ..., :11] = False
    module = _Heads(groups).eval()
    ours, _ = llava_sdpa_attention(module, query, key, value, mask, scaling=dim**-0.5)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    assert ours.shape == ref.shape == (batch, 1, kv_heads * groups, dim)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)


def test_prefill_is_transformers_sdpa():
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    module = _Heads(2).eval()
    ours, _ = llava_sdpa_attention(module, query, key, value, None, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
    assert torch.equal(ours, ref)


def test_loaded_models_use_it_and_towers_keep_theirs(tiny_model):
    assert tiny_model.model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert tiny_model.model.model.vision_tower.config._attn_implementation == TOWER_ATTN_IMPLEMENTATION
