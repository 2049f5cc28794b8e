"""LoRA checkpoints (ORIG builder.py branch A): adapter + non-LoRA trainables on a base, merged.

A LoRA folder holds config.json (the LLaVA config of the fine-tune), adapter_config.json and
adapter_model.safetensors (peft), and usually non_lora_trainables.safetensors (projector, and
whatever else was trained in full). `merge_adapter` folds the adapter into the weights with peft;
`merge_lora` writes the merged model as a full checkpoint that loads without peft or a base.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from model_runtime.checkpoint.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsFile, save_state_dict
from model_runtime.config import ConfigError

COPIED_FILES = ("generation_config.json",)


def read_non_lora_trainables(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of non_lora_trainables.safetensors under the model's own names: the peft wrapper's
    "base_model." prefix removed, then one "model." when names start with "model.model." (ORIG)."""
    tensors = {name.removeprefix("base_model."): t for name, t in SafetensorsFile(file)}
    if any(name.startswith("model.model.") for name in tensors):
        tensors = {name.removeprefix("model."): t for name, t in tensors.items()}
    return tensors


def merge_adapter(model: nn.Module, adapter_dir: Path) -> nn.Module:
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
        return wrapped.merge_and_unload()


def merge_lora(base: str | Path, adapter: str | Path, out: str | Path, dtype: str = "auto",
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write `adapter` (a LoRA folder) merged onto `base` as a full checkpoint in `out`."""
    from model_runtime.checkpoint.folder import inspect_checkpoint, resolve_checkpoint
    from model_runtime.checkpoint.loader import load_pretrained_model

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the merged checkpoint")
    adapter_path = resolve_checkpoint(adapter)
    if inspect_checkpoint(adapter_path).kind != "lora":
        raise ConfigError(f"{adapter_path} is not a LoRA adapter folder (no adapter_config.json)")
    loaded = load_pretrained_model(adapter_path, model_base=base, dtype=dtype)
    config = dict(loaded.config.raw)
    config["vocab_size"] = loaded.model.get_input_embeddings().weight.shape[0]
    config["torch_dtype"] = str(loaded.dtype).removeprefix("torch.")
    state = loaded.model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, out, max_shard_bytes, progress="merge-lora: writing")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    loaded.tokenizer.save_pretrained(out)
    base_path = resolve_checkpoint(base)
    for name in COPIED_FILES:
        source = adapter_path / name if (adapter_path / name).exists() else base_path / name
        if source.exists() and not (out / name).exists():
            shutil.copyfile(source, out / name)
    return out
