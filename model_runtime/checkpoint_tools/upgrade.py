"""upgrade: old LLaVA checkpoints -> the current layout (ORIG model/utils.py auto_upgrade +
model/consolidate.py), without questions and without touching any class.

A config written before the LLaVA classes existed names a plain language model
(`model_type: "llama"`, `architectures: ["LlamaForCausalLM"]`) although it carries `mm_*` keys:
the architecture becomes the LLaVA one and model_type "llava" (ORIG's values). Pickled weights
(the consolidate step) become safetensors through convert-bin's reader. Whether a checkpoint is
LLaVA is read from its keys, never from its path. The result goes to DST (a copy) or back into
SRC; a second run finds nothing to change and writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tqdm import tqdm

from model_runtime.checkpoint.folder import PICKLE_SUFFIXES, pickled_files
from model_runtime.checkpoint_tools.convert import convert_bin
from model_runtime.config import ConfigError, read_config_dict

LLAVA_ARCHITECTURE = {
    "LlamaForCausalLM": "LlavaLlamaForCausalLM",
    "MistralForCausalLM": "LlavaMistralForCausalLM",
    "Qwen2ForCausalLM": "LlavaQwenForCausalLM",
}
PLAIN_MODEL_TYPES = ("llama", "mistral", "qwen2")


def upgraded_config(raw: dict) -> tuple[dict, list[str]]:
    """The upgraded config and one line per change (empty when already current)."""
    if not (raw.get("mm_vision_tower") or raw.get("vision_tower")):
        raise ConfigError("config.json has no mm_vision_tower: not a LLaVA checkpoint, nothing to upgrade")
    new = dict(raw)
    changes = []
    architectures = list(raw.get("architectures") or [])
    if architectures and architectures[0] in LLAVA_ARCHITECTURE:
        architectures[0] = LLAVA_ARCHITECTURE[architectures[0]]
        new["architectures"] = architectures
        changes.append(f"architectures[0]: {raw['architectures'][0]!r} -> {architectures[0]!r}")
    if raw.get("model_type") in PLAIN_MODEL_TYPES:
        new["model_type"] = "llava"
        changes.append(f"model_type: {raw['model_type']!r} -> 'llava'")
    return new, changes


def upgrade_checkpoint(src: str | Path, dst: str | Path | None = None) -> list[str]:
    """Upgrade SRC into DST (default: SRC itself). Returns what changed, one line each."""
    src = Path(src)
    raw = read_config_dict(src)
    config, changes = upgraded_config(raw)
    has_safetensors = any(src.glob("*.safetensors"))
    needs_conversion = bool(pickled_files(src)) and not has_safetensors
    target = Path(dst) if dst is not None else src
    in_place = target.exists() and target.resolve() == src.resolve()
    if not in_place:
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} is not empty; choose a new folder")
        target.mkdir(parents=True)
        files = [f for f in sorted(src.iterdir()) if f.is_file() and f.suffix not in PICKLE_SUFFIXES]
        for file in tqdm(files, desc="upgrade: copying", unit="file"):
            shutil.copyfile(file, target / file.name)
        changes.insert(0, f"copied {src} to {target}")
    if needs_conversion:
        report = convert_bin(src, target)
        changes += [f"weights: {old} -> {new}" for old, new in report.converted.items()]
        changes += [f"skipped {old}: {why}" for old, why in report.skipped.items()]
    if config != raw or not in_place:
        (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return changes
