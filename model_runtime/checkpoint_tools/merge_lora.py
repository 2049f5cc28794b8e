"""`llava-serve merge-lora`: a LoRA adapter merged onto its base, written as a full checkpoint.

The merge is the loader's own (load_pretrained_model with `model_base`, peft's merge_and_unload);
the result is written as sharded safetensors with the tokenizer, a config.json whose vocab_size
and torch_dtype match the merged weights, and the adapter's (else the base's) generation config,
so it loads without peft or a base. The output folder must be new or empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from model_runtime.checkpoint.folder import inspect_checkpoint, resolve_checkpoint
from model_runtime.checkpoint.loader import load_pretrained_model
from model_runtime.checkpoint_tools.safetensors_write import DEFAULT_MAX_SHARD_BYTES, save_state_dict
from model_runtime.config import ConfigError

COPIED_FILES = ("generation_config.json",)


def merge_lora(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    dtype: str = "auto",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write `adapter` (a LoRA folder) merged onto `base` as a full checkpoint in `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the merged checkpoint")
    adapter_path = resolve_checkpoint(adapter)
    if inspect_checkpoint(adapter_path).kind != "lora":
        raise ConfigError(f"{adapter_path} is not a LoRA adapter folder (no adapter_config.json)")
    loaded = load_pretrained_model(adapter_path, model_base=base, dtype=dtype)
    config = dict(loaded.config.raw)
    config["vocab_size"] = loaded.model.get_input_embeddings().get_parameter("weight").shape[0]
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
