"""One media item's encoding as a list of units that can run across engine steps.

A visual item's crops (an image's anyres crops, a video's frames) go through the vision tower in
groups of at most `max_crops` crops, one encoder layer per unit; the last unit also runs the
projector and the item's merge (`LlavaMetaForCausalLM.finish_visual_item`), so the rows equal
`encode_media`'s up to the batching of the crops. An audio item is one unit (the Whisper
encoder over all its chunks). `unit_flops` says what each unit costs (arch/cost.py), so the
scheduler can give every step the same amount of work.
"""

from __future__ import annotations

import torch

from model_runtime.arch import cost, layout
from model_runtime.arch.vision import TowerPass
from model_runtime.inputs import EncodedItem, MediaInput

VISUAL_MODALITIES = ("image", "video")


class EncodingJob:
    def __init__(self, model, item: MediaInput, max_crops: int) -> None:
        if max_crops < 1:
            raise ValueError(f"max_crops={max_crops}: must be >= 1")
        self.model = model
        self.item = item
        self.seconds = 0.0  # time spent in run(), set by the caller that times it
        cfg = model.llava_config
        if item.modality in VISUAL_MODALITIES:
            self._groups = list(torch.split(item.data, max_crops))
            self._layers = len(model.model.vision_tower.pass_layers)
            self.unit_flops = [cost.vision_layer_flops(cfg, g.shape[0]) for g in self._groups
                               for _ in range(self._layers)]
            # the last unit also runs the projector over every crop's patches (pooled ones for videos
            # pooled before the projector)
            weights = sum(p.numel() for p in model.model.mm_projector.parameters() if p.dim() == 2)
            side = cfg.vision.num_patches_per_side
            if item.modality == "video" and cfg.pools_video_before_projector:
                side = layout.video_pool_sides(cfg)[0]
            patches = side**2 * item.data.shape[0]
            self.unit_flops[-1] += 2.0 * weights * patches
        elif item.modality == "audio":
            self._groups, self._layers = [], 1
            self.unit_flops = [cost.audio_flops(cfg, item.data.shape[0])]
        else:
            raise ValueError(f"modality {item.modality!r} cannot be encoded")
        self.num_done = 0
        self._pass: TowerPass | None = None
        self._features: list[torch.Tensor] = []
        self._result: EncodedItem | None = None

    @property
    def num_units(self) -> int:
        return len(self.unit_flops)

    @property
    def is_done(self) -> bool:
        return self._result is not None

    def remaining_flops(self) -> list[float]:
        return self.unit_flops[self.num_done :]

    def run(self, num_units: int) -> None:
        """Run the next `num_units` units (fewer if fewer are left)."""
        for _ in range(min(num_units, self.num_units - self.num_done)):
            if self.item.modality == "audio":
                rows = self.model.encode_audio_items([self.item])[0]
                self._result = EncodedItem("audio", rows)
            else:
                self._run_visual_unit()
            self.num_done += 1

    def _run_visual_unit(self) -> None:
        model = self.model
        if self._pass is None:
            group = self._groups[self.num_done // self._layers]
            device, dtype = model.model.embed_tokens.weight.device, model.model.embed_tokens.weight.dtype
            self._pass = TowerPass(model.model.vision_tower, group.to(device=device, dtype=dtype))
        self._pass.run(1)
        if self._pass.is_done:
            self._features.append(self._pass.features())
            self._pass = None
            if len(self._features) == len(self._groups):
                features = torch.cat(self._features, dim=0)
                self._features = []
                rows = model.finish_visual_item(self.item, model.project_visual_item(self.item, features))
                self._result = EncodedItem(self.item.modality, rows)

    def result(self) -> EncodedItem:
        if self._result is None:
            raise RuntimeError(f"encoding at unit {self.num_done} of {self.num_units}")
        return self._result
