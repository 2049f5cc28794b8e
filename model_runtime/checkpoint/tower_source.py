"""Vision-tower weights from the tower's own checkpoint, when the LLaVA checkpoint lacks them.

LLaVA-1.5/1.6 checkpoints (and LM bases under LoRA / projector-only folders) do not ship the
tower: ORIG builds it from the hub id in `mm_vision_tower` (clip_encoder.py / siglip_encoder.py).
We read the same weights (a local folder or a hub id, safetensors only) for exactly the tower
tensors still missing: checkpoint name `model.vision_tower.vision_tower.<name>` is `<name>` in the
tower's file (`vision_model.*` in CLIP and SigLIP releases; their text towers are never read).
"""

from __future__ import annotations

import logging
from collections.abc import Set

from torch import nn

from model_runtime.checkpoint.folder import resolve_checkpoint, weight_files
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.checkpoint.tensors import load_tensors
from model_runtime.config import ConfigError, LlavaConfig

log = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower.vision_tower."


def fill_vision_tower(model: nn.Module, cfg: LlavaConfig, missing: Set[str]) -> set[str]:
    """Load the missing tower tensors from `cfg.mm_vision_tower`; returns the names filled."""
    wanted = {name.removeprefix(TOWER_PREFIX): name for name in missing if name.startswith(TOWER_PREFIX)}
    if not wanted:
        return set()
    try:
        source = resolve_checkpoint(cfg.mm_vision_tower)
    except ConfigError as e:
        raise ConfigError(
            f"the checkpoint has no vision-tower weights and mm_vision_tower={cfg.mm_vision_tower!r} "
            f"cannot be read: {e}"
        ) from e
    tensors = {}
    for file in weight_files(source):
        reader = SafetensorsFile(file)
        for name in set(reader.tensors) & set(wanted):
            tensors[wanted[name]] = reader.read(name)
    log.info("vision tower: %d tensors from %s", len(tensors), source)
    return load_tensors(model, tensors)
