"""Vision towers: pixels [N, 3, S, S] -> patch features [N, P*P, Cv].

SigLIP as ORIG runs it (llava/model/multimodal_encoder/siglip_encoder.py): the published tower
minus its LAST encoder layer, no pooling head, output taken BEFORE post_layernorm (whose weights
exist but are unused), eager attention with a float32 softmax. Module names mirror ORIG so the
checkpoint's `model.vision_tower.vision_tower.vision_model.*` keys load as they are.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from model_runtime.config import LlavaConfig


class _SiglipHolder(nn.Module):
    """ORIG's SigLipVisionModel level: only holds `vision_model` (the key path needs it)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.vision_model = SiglipVisionModel(config)


class SigLipVisionTower(nn.Module):
    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        v = cfg.vision
        self.config = SiglipVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_hidden_layers - 1,  # ORIG deletes the last layer at load
            num_attention_heads=v.num_attention_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps,
            hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
            attn_implementation="eager",
        )
        self.vision_tower = _SiglipHolder(self.config)
        self.num_patches_per_side = v.num_patches_per_side

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, P*P, Cv], in the dtype of pixel_values (ORIG casts back)
        model = self.vision_tower.vision_model
        hidden = model.embeddings(pixel_values.to(self.dtype))
        hidden = model.encoder(inputs_embeds=hidden).last_hidden_state
        return hidden.to(pixel_values.dtype)


def build_vision_tower(cfg: LlavaConfig) -> nn.Module:
    if cfg.vision.kind == "siglip":
        return SigLipVisionTower(cfg)
    raise ValueError(f"vision tower kind {cfg.vision.kind!r} is not supported yet (CLIP: model-core issue)")
