"""A checkpoint folder: where it is (local path or hub id) and what its files make it.

`inspect_checkpoint` decides the kind from the files present and the tensor names in their
headers, never from the folder's name: "lora" (adapter_config.json + adapter weights), "full"
(language-model weights), "projector" (only multimodal weights such as `model.mm_projector.*`).
Pickled weights (.bin/.pt/.pth) are never read here: a folder that has only those is refused with
the `llava-serve convert-bin` command that converts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model_runtime.checkpoint.safetensors_io import INDEX_NAME, SINGLE_NAME, SafetensorsFile
from model_runtime.config import ConfigError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
# Tensors of the language model proper; every other `model.*` tensor belongs to the multimodal parts
# (towers, projectors, image_newline, faster_token, resampler).
LM_PREFIXES = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.",
               "language_model.", "model.language_model.")  # the last two: llava-hf (4.x hub, transformers 5)
# A weight delta (`llava-serve make-delta`) carries this key in config.json and in each shard's
# metadata; the loader refuses it with the apply-delta command that rebuilds the model.
DELTA_KEY = "llava_serve_delta"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def is_language_model_key(name: str) -> bool:
    return name.startswith(LM_PREFIXES)


@dataclass(frozen=True)
class CheckpointFiles:
    """What a checkpoint folder holds, as far as loading is concerned."""

    path: Path
    kind: str  # "full" | "lora" | "projector"
    weight_files: tuple[Path, ...]  # model weights (full), multimodal weights (projector); () for lora
    adapter_file: Path | None = None  # lora: adapter_model.safetensors
    non_lora_file: Path | None = None  # lora: non_lora_trainables.safetensors, when present

    def tensor_names(self) -> list[str]:
        return [name for file in self.weight_files for name in SafetensorsFile(file).names()]


def resolve_checkpoint(model_path: str | Path) -> Path:
    """A local folder, or a hub id fetched (safetensors and configs only) into the standard cache."""
    path = Path(model_path)
    if path.is_dir():
        return path
    text = str(model_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ConfigError(f"{model_path} is not a checkpoint folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS))
    except HFValidationError as e:
        raise ConfigError(f"{model_path!r} is neither a local folder nor a valid hub id") from e
    except RepositoryNotFoundError as e:
        raise ConfigError(f"hub repository {model_path!r} not found (or not accessible)") from e
    except LocalEntryNotFoundError as e:
        raise ConfigError(f"{model_path!r} is not in the local hub cache and the hub cannot be reached") from e


def inspect_checkpoint(path: str | Path) -> CheckpointFiles:
    path = Path(path)
    if (path / ADAPTER_CONFIG).exists():
        adapter = _require_safetensors(path, ADAPTER_WEIGHTS, "LoRA adapter weights")
        non_lora = path / NON_LORA_WEIGHTS
        has_non_lora = non_lora.exists()
        if not has_non_lora:
            _refuse_pickle_only(path, [path / "non_lora_trainables.bin"])
        return CheckpointFiles(path, "lora", (), adapter_file=adapter,
                               non_lora_file=non_lora if has_non_lora else None)
    files = weight_files(path)
    names = [name for file in files for name in SafetensorsFile(file).names()]
    if any(is_language_model_key(n) for n in names):
        return CheckpointFiles(path, "full", files)
    if names:
        return CheckpointFiles(path, "projector", files)
    raise ConfigError(f"{path}: the .safetensors files hold no tensors")


def weight_files(path: str | Path) -> tuple[Path, ...]:
    """The model's safetensors files: the index's shards, model.safetensors, or any *.safetensors."""
    path = Path(path)
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index} is not a valid safetensors index") from e
        files = tuple(path / name for name in dict.fromkeys(weight_map.values()))
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ConfigError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    if (path / SINGLE_NAME).exists():
        return (path / SINGLE_NAME,)
    files = tuple(
        f for f in sorted(path.glob("*.safetensors")) if f.name not in (ADAPTER_WEIGHTS, NON_LORA_WEIGHTS)
    )
    if files:
        return files
    _refuse_pickle_only(path, pickled_files(path))
    raise ConfigError(f"{path} holds no .safetensors weights (hub ids are fetched without .bin files: download "
                      "a .bin-only release to a folder and run `llava-serve convert-bin` on it)")


def pickled_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())


def _require_safetensors(path: Path, name: str, what: str) -> Path:
    file = path / name
    if file.exists():
        return file
    _refuse_pickle_only(path, [path / (Path(name).stem + s) for s in PICKLE_SUFFIXES])
    raise ConfigError(f"{path}: {what} ({name}) are missing")


def _refuse_pickle_only(path: Path, candidates: list[Path]) -> None:
    found = [f.name for f in candidates if f.exists()]
    if found:
        raise ConfigError(
            f"{path} holds pickled weights ({', '.join(found)}) that llava-serve never loads; convert them once "
            f"with `llava-serve convert-bin {path} DST` and use DST"
        )
