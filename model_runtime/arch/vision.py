"""Vision towers: pixels [N, 3, S, S] -> patch features [N, T, Cv] (T = P*P, +1 with CLIP's CLS).

SigLIP as ORIG runs it (llava/model/multimodal_encoder/siglip_encoder.py): the published tower
minus its LAST encoder layer, no pooling head, output taken BEFORE post_layernorm (whose weights
exist but are unused), eager attention with a float32 softmax (`llava_eager`, arch/eager_attention.py:
the same operations, a few heads at a time on the CPU). CLIP as ORIG's clip_encoder.py:
the full tower, features read from `hidden_states[mm_vision_select_layer]` (or several layers
concatenated on channels for the slice features), CLS dropped unless `*cls_patch`. Module names
mirror ORIG so `model.vision_tower.vision_tower.vision_model.*` keys load as they are. Both cast
the output back to the pixel dtype (ORIG).

A tower runs through `TowerPass`: embeddings, then its encoder layers a few at a time, then the
feature selection. `forward` is one pass run to the end; the engine runs a pass over several
steps (arch/encoding.py) so that one big image or video cannot hold up decoding. Same code, so
the same numbers either way.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from model_runtime.arch.eager_attention import TOWER_ATTN_IMPLEMENTATION
from model_runtime.config import LlavaConfig

VisionModel = TypeVar("VisionModel", SiglipVisionModel, CLIPVisionModel)


class _TowerHolder(nn.Module, Generic[VisionModel]):
    """ORIG's `vision_tower` level (a transformers *VisionModel); only holds `vision_model` so the
    checkpoint's key path `vision_tower.vision_tower.vision_model.*` matches."""

    def __init__(self, vision_model: VisionModel) -> None:
        super().__init__()
        self.vision_model: VisionModel = vision_model


class TowerPass:
    """A group of crops [N, 3, S, S] going through a vision tower, some layers at a time."""

    def __init__(self, tower: VisionTower, pixel_values: torch.Tensor) -> None:
        self.tower = tower
        self.out_dtype = pixel_values.dtype
        self.hidden = tower.embed(pixel_values.to(tower.dtype))
        self.num_done = 0  # layers run
        self.states = {0: self.hidden} if 0 in tower.kept_states else {}

    @property
    def num_layers(self) -> int:
        return len(self.tower.pass_layers)

    @property
    def is_done(self) -> bool:
        return self.num_done == self.num_layers

    def run(self, num_layers: int) -> None:
        for layer in self.tower.pass_layers[self.num_done : self.num_done + num_layers]:
            self.hidden = layer(self.hidden, None)
            self.num_done += 1
            if self.num_done in self.tower.kept_states:
                self.states[self.num_done] = self.hidden

    def features(self) -> torch.Tensor:
        """[N, T, Cv] in the pixel dtype; every layer must have run."""
        if not self.is_done:
            raise RuntimeError(f"tower pass at layer {self.num_done} of {self.num_layers}")
        return self.tower.select(self).to(self.out_dtype)


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
            # transformers takes attn_implementation through **kwargs; its @strict signature omits it
            attn_implementation=TOWER_ATTN_IMPLEMENTATION,  # type: ignore[call-arg]
        )
        self.vision_tower = _TowerHolder(SiglipVisionModel(self.config))
        self.num_patches_per_side = v.num_patches_per_side

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def pass_layers(self) -> nn.ModuleList:
        return self.vision_tower.vision_model.encoder.layers

    @property
    def kept_states(self) -> frozenset[int]:
        return frozenset({len(self.pass_layers)})

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_tower.vision_model.embeddings(pixel_values)

    def select(self, run: TowerPass) -> torch.Tensor:
        return run.hidden  # the last layer's output, before post_layernorm (ORIG)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, P*P, Cv], in the dtype of pixel_values (ORIG casts back)
        run = TowerPass(self, pixel_values)
        run.run(run.num_layers)
        return run.features()


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
            # transformers takes attn_implementation through **kwargs; its @strict signature omits it
            attn_implementation="sdpa",  # type: ignore[call-arg]
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

    @property
    def pass_layers(self) -> nn.ModuleList:
        return self.vision_tower.vision_model.encoder.layers[: max(self.feature_layers)]

    @property
    def kept_states(self) -> frozenset[int]:
        return frozenset(self.feature_layers)  # state i == transformers' hidden_states[i]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.vision_tower.vision_model
        return model.pre_layrnorm(model.embeddings(pixel_values))

    def select(self, run: TowerPass) -> torch.Tensor:
        features = torch.cat([run.states[i] for i in self.feature_layers], dim=-1)
        return features if self.keeps_cls else features[:, 1:]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, T, Cv] with T = P*P (+1 CLS first for *cls_patch)
        run = TowerPass(self, pixel_values)
        run.run(run.num_layers)
        return run.features()


VisionTower = SigLipVisionTower | CLIPVisionTower


def build_vision_tower(cfg: LlavaConfig) -> VisionTower:
    if cfg.vision.kind == "siglip":
        return SigLipVisionTower(cfg)
    return CLIPVisionTower(cfg)
