"""LoRA checkpoints (ORIG builder.py branch A): adapter + non-LoRA trainables on a base, merged.

A LoRA folder holds config.json (the LLaVA config of the fine-tune), adapter_config.json and
adapter_model.safetensors (peft), and usually non_lora_trainables.safetensors (projector, and
whatever else was trained in full). `merge_adapter` folds the adapter into the weights with peft,
at load; writing the merged model as a full checkpoint is the checkpoint tools' `merge_lora`.
`read_adapter` reads one for serving unmerged beside others (arch/lora_layers.py): its pairs by
module path, each with its scaling, and a content key (BLAKE2b of every tensor and its scaling),
which names the adapter in the caches whatever it is called.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from model_runtime.arch.lora_layers import LORA_TARGETS, LoraWeights
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.config import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter as served: its pairs by module path ("model.layers.0.self_attn.q_proj")."""

    path: str
    key: str  # content hash: equal keys, equal weights
    rank: int
    weights: dict[str, LoraWeights]

    @property
    def num_bytes(self) -> int:
        return sum(w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size() for w in self.weights.values())


def read_adapter(folder: str | Path, max_rank: int | None = None) -> LoraAdapter:
    """A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) on the language model's
    linears; a ConfigError naming what it cannot serve (another module, DoRA, a bias, a pickled file,
    a rank above `max_rank`)."""
    folder = Path(folder)
    config = _adapter_config(folder)
    weights_file = folder / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        pickled = folder / "adapter_model.bin"
        hint = " (a pickled adapter_model.bin: convert it with `llava-serve convert-bin`)" if pickled.exists() else ""
        raise ConfigError(f"{folder}: no {ADAPTER_WEIGHTS}{hint}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in SafetensorsFile(weights_file):
        module, part = _split_name(folder, name)
        pairs.setdefault(module, {})[part] = tensor
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    if max_rank is not None and rank > max_rank:
        raise ConfigError(f"{folder}: rank {rank} is above --max-lora-rank {max_rank}")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    digest = hashlib.blake2b(digest_size=16)
    weights = {}
    for module in sorted(pairs):
        if set(pairs[module]) != {"lora_A", "lora_B"}:
            raise ConfigError(f"{folder}: {module} has {sorted(pairs[module])}, not one lora_A and one lora_B")
        a, b = pairs[module]["lora_A"], pairs[module]["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ConfigError(f"{folder}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair")
        weights[module] = LoraWeights(a, b, scaling)
        digest.update(module.encode() + repr(scaling).encode())
        for t in (a, b):
            digest.update(t.float().numpy().tobytes())
    return LoraAdapter(str(folder), digest.hexdigest(), rank, weights)


def _adapter_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}: cannot read {ADAPTER_CONFIG} ({e})") from e
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{folder}: a {config.get('peft_type')} adapter, not LoRA")
    if config.get("use_dora"):
        raise ConfigError(f"{folder}: DoRA adapters are not served")
    if config.get("bias", "none") != "none":
        raise ConfigError(f"{folder}: adapters that train biases (bias={config['bias']!r}) are not served")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(f"{folder}: per-module ranks or alphas (rank_pattern, alpha_pattern) are not served")
    if "r" not in config:
        raise ConfigError(f"{folder}: {ADAPTER_CONFIG} names no rank r")
    return config


def _split_name(folder: Path, name: str) -> tuple[str, str]:
    """PEFT's "base_model.model.<module>.lora_A.weight" -> (<module>, "lora_A"); refuses other modules."""
    stem = name.removeprefix("base_model.model.")
    for part in ("lora_A", "lora_B"):
        suffix = f".{part}.weight"
        if stem.endswith(suffix):
            module = stem[: -len(suffix)]
            if module.startswith("model.layers.") and module.rsplit(".", 1)[-1] in LORA_TARGETS:
                return module, part
            raise ConfigError(f"{folder}: {module}: only the language model's linears {LORA_TARGETS} take "
                              "LoRA here")
    raise ConfigError(f"{folder}: {name}: not a LoRA weight (embedding rows, lm_head and biases are not served)")


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
