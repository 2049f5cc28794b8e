"""LoRA checkpoints (ORIG builder.py branch A): adapter + non-LoRA trainables on a base, merged.

A LoRA folder holds config.json (the LLaVA config of the fine-tune), adapter_config.json and
adapter_model.safetensors (peft), and usually non_lora_trainables.safetensors (projector, and
whatever else was trained in full). `merge_adapter` folds the adapter into the weights with peft,
at load; writing the merged model as a full checkpoint is the checkpoint tools' `merge_lora`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from transformers import PreTrainedModel

from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.config import ConfigError


def read_non_lora_trainables(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of non_lora_trainables.safetensors under the model's own names: the peft wrapper's
    "base_model." prefix removed, then one "model." when names start with "model.model." (ORIG)."""
    tensors = {name.removeprefix("base_model."): t for name, t in SafetensorsFile(file)}
    if any(name.startswith("model.model.") for name in tensors):
        tensors = {name.removeprefix("model."): t for name, t in tensors.items()}
    return tensors


def merge_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """The peft adapter in `adapter_dir` merged into `model`'s weights; returns the plain model."""
    from peft import PeftModel

    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; nothing for us to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # merging into bitsandbytes layers re-quantizes them: documented (docs/CHECKPOINTS.md), not news
        warnings.filterwarnings("ignore", message="Merge lora module to .*-bit linear", category=UserWarning)
        try:
            wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ConfigError(f"{adapter_dir}: the LoRA adapter does not fit the base model ({e})") from e
        merged = wrapped.merge_and_unload()
    assert isinstance(merged, PreTrainedModel)  # the base model, its LoRA layers merged
    return merged
