"""Vision towers: pixels [N, 3, S, S] -> patch features [N, T, Cv] (T = P*P, +1 with CLIP's CLS).

SigLIP as ORIG runs it (llava/model/multimodal_encoder/siglip_encoder.py): the published tower
minus its LAST encoder layer, no pooling head, output taken BEFORE post_layernorm (whose weights
exist but are unused), eager attention with a float32 softmax. CLIP as ORIG's clip_encoder.py:
the full tower, features read from `hidden_states[mm_vision_select_layer]` (or several layers
concatenated on channels for the slice features), CLS dropped unless `*cls_patch`. Module names
mirror ORIG so `model.vision_tower.vision_tower.vision_model.*` keys load as they are. Both cast
the output back to the pixel dtype (ORIG).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from model_runtime.config import LlavaConfig


class _TowerHolder(nn.Module):
    """ORIG's `vision_tower` level (a transformers *VisionModel); only holds `vision_model` so the
    checkpoint's key path `vision_tower.vision_tower.vision_model.*` matches."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model


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
            hidden_act=v.hidden_act,
            vision_use_head=False,
            attn_implementation="eager",
        )
        self.vision_tower = _TowerHolder(SiglipVisionModel(self.config))
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


class CLIPVisionTower(nn.Module):
    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        v = cfg.vision
        self.config = CLIPVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps,
            hidden_act=v.hidden_act,
            attn_implementation="sdpa",
        )
        self.vision_tower = _TowerHolder(CLIPVisionModel(self.config))
        self.num_patches_per_side = v.num_patches_per_side
        num_states = v.num_hidden_layers + 1
        # hidden_states indices to concatenate, made non-negative; only layers up to the deepest run
        self.feature_layers = [i % num_states for i in cfg.clip_feature_layers]
        self.keeps_cls = cfg.has_cls_token

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, T, Cv] with T = P*P (+1 CLS first for *cls_patch)
        model = self.vision_tower.vision_model
        hidden = model.pre_layrnorm(model.embeddings(pixel_values.to(self.dtype)))
        states = [hidden]  # states[i] == transformers' hidden_states[i]
        for layer in model.encoder.layers[: max(self.feature_layers)]:
            hidden = layer(hidden, None)
            states.append(hidden)
        features = torch.cat([states[i] for i in self.feature_layers], dim=-1)
        if not self.keeps_cls:
            features = features[:, 1:]
        return features.to(pixel_values.dtype)


def build_vision_tower(cfg: LlavaConfig) -> nn.Module:
    if cfg.vision.kind == "siglip":
        return SigLipVisionTower(cfg)
    return CLIPVisionTower(cfg)
