"""Projectors: ORIG parameter names, and values against direct computations (pooler, res blocks)."""

from __future__ import annotations

import math

import pytest
import torch

from model_runtime.arch.projector import build_vision_projector
from model_runtime.config import ConfigError, LlavaConfig

CV, D = 6, 8


def config(projector: str, cv: int = CV, side: int = 5) -> LlavaConfig:
    return LlavaConfig.from_dict({
        "architectures": ["LlavaQwenForCausalLM"], "hidden_size": D, "mm_vision_tower": "google/siglip",
        "mm_vision_tower_config": {"kind": "siglip", "hidden_size": cv, "intermediate_size": 8, "num_hidden_layers": 2,
                                   "num_attention_heads": 1, "image_size": 14 * side, "patch_size": 14},
        "mm_projector_type": projector,
    })


def gelu(x: torch.Tensor) -> torch.Tensor:  # exact erf GELU, written out
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(("kind", "names"), [
    ("linear", {"weight", "bias"}),
    ("mlp2x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias"}),
    ("mlp3x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
    ("mlp2x_res1x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias", "3.pre_norm.weight", "3.pre_norm.bias",
                          "3.proj.0.weight", "3.proj.0.bias", "3.proj.2.weight", "3.proj.2.bias"}),
    ("pooler", {"conv_pool.weight", "conv_pool.bias", "proj.1.weight", "proj.1.bias"}),
])
def test_parameter_names_are_origs(kind, names):
    assert set(build_vision_projector(config(kind)).state_dict()) == names


def test_identity_needs_equal_widths():
    x = torch.randn(2, 25, D)
    torch.testing.assert_close(build_vision_projector(config("identity", cv=D))(x), x)
    with pytest.raises(ConfigError, match="identity"):
        config("identity", cv=CV)


def test_pooler_projector_matches_a_direct_convolution():
    torch.manual_seed(0)
    projector = build_vision_projector(config("pooler", side=5))
    x = torch.randn(2, 25, CV)  # P = 5 -> floor(5/2) = 2 per side
    out = projector(x)
    assert out.shape == (2, 4, D)
    w, b = projector.conv_pool.weight, projector.conv_pool.bias  # [D, Cv, 2, 2]
    lin = projector.proj[1]
    for n in range(2):
        grid = x[n].view(5, 5, CV)
        for i in range(2):
            for j in range(2):
                window = grid[2 * i:2 * i + 2, 2 * j:2 * j + 2]  # [2, 2, Cv]
                conv = torch.einsum("abc,ocab->o", window, w) + b
                expected = gelu(conv) @ lin.weight.T + lin.bias
                torch.testing.assert_close(out[n, i * 2 + j], expected, atol=1e-5, rtol=1e-5)


def test_mlp_res_projector_matches_a_direct_computation():
    torch.manual_seed(0)
    projector = build_vision_projector(config("mlp2x_res2x_gelu"))
    x = torch.randn(3, 4, CV)
    first, second = projector[0], projector[2]
    h = gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    for block in (projector[3], projector[4]):
        norm = block.pre_norm
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        inner, outer = block.proj[0], block.proj[2]
        h = h + gelu(h @ inner.weight.T + inner.bias) @ outer.weight.T + outer.bias
    torch.testing.assert_close(projector(x), h, atol=1e-5, rtol=1e-5)
