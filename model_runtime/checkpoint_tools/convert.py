"""convert-bin: legacy pickled weights -> safetensors. The ONE place llava-serve reads a pickle.

Each .bin/.pt/.pth file is opened with `torch.load(weights_only=True)` (plain tensors only: no
code runs) and written next to its siblings as safetensors: `pytorch_model.bin` ->
`model.safetensors`, `pytorch_model-0000i-of-0000N.bin` -> `model-0000i-of-0000N.safetensors`
(+ index), anything else (`mm_projector.bin`, `non_lora_trainables.bin`, `adapter_model.bin`)
keeps its stem. Files that are not plain tensor dicts (training_args.bin, optimizer states) are
reported and skipped. Configs and tokenizer files are copied when DST is another folder.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from model_runtime.checkpoint.folder import PICKLE_SUFFIXES, pickled_files
from model_runtime.checkpoint.safetensors_io import INDEX_NAME
from model_runtime.checkpoint_tools.safetensors_write import save_tensors
from model_runtime.config import ConfigError

SHARD_PATTERN = re.compile(r"^pytorch_model-(\d+)-of-(\d+)\.bin$")
PICKLE_INDEX = "pytorch_model.bin.index.json"


@dataclass
class ConversionReport:
    converted: dict[str, str] = field(default_factory=dict)  # pickle name -> safetensors name
    skipped: dict[str, str] = field(default_factory=dict)  # pickle name -> why
    copied: list[str] = field(default_factory=list)


def safetensors_name(pickle_name: str) -> str:
    if pickle_name == "pytorch_model.bin":
        return "model.safetensors"
    m = SHARD_PATTERN.match(pickle_name)
    if m:
        return f"model-{m.group(1)}-of-{m.group(2)}.safetensors"
    return Path(pickle_name).stem + ".safetensors"


def convert_bin(src: str | Path, dst: str | Path) -> ConversionReport:
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder")
    pickles = pickled_files(src)
    if not pickles:
        raise ConfigError(f"{src} holds no .bin/.pt/.pth files to convert")
    in_place = dst.exists() and dst.resolve() == src.resolve()
    clashes = [safetensors_name(p.name) for p in pickles if (dst / safetensors_name(p.name)).exists()]
    if clashes:
        raise ConfigError(f"{dst} already has {', '.join(clashes)}; nothing converted")
    dst.mkdir(parents=True, exist_ok=True)
    report = ConversionReport()
    weight_map: dict[str, str] = {}
    for file in tqdm(pickles, desc="convert-bin", unit="file"):
        try:
            state = _load_pickle(file)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            report.skipped[file.name] = f"not plain tensors ({type(e).__name__})"
            continue
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            report.skipped[file.name] = "not a dict of tensors"
            continue
        name = safetensors_name(file.name)
        save_tensors({str(k): v for k, v in state.items()}, dst / name)
        report.converted[file.name] = name
        if SHARD_PATTERN.match(file.name):
            weight_map.update(dict.fromkeys(map(str, state), name))
    if weight_map:
        total = sum((dst / n).stat().st_size for n in set(weight_map.values()))
        (dst / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2) + "\n")
    if not in_place:
        for file in sorted(src.iterdir()):
            if file.is_file() and file.suffix not in PICKLE_SUFFIXES and file.name != PICKLE_INDEX \
                    and not (dst / file.name).exists():
                shutil.copyfile(file, dst / file.name)
                report.copied.append(file.name)
    if not report.converted:
        raise ConfigError(f"no weights converted from {src}: {report.skipped}")
    return report


def _load_pickle(file: Path) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # files from before torch's zip format cannot be memory-mapped
        return torch.load(file, map_location="cpu", weights_only=True)
