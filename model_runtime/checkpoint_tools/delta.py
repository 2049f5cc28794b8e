"""Weight deltas (spec 9.2, ORIG llava/model/apply_delta.py and make_delta.py): target = base + delta.

`make_delta(base, target, out)` writes target - base; `apply_delta(base, delta, out)` writes
base + delta. Both walk the checkpoints tensor by tensor and shard by shard (one output shard per
input shard), so memory stays near one shard instead of two whole models. The math is float32 and
the delta is stored in float32 (float64 for the rare 16-bit tensor whose float32 delta would not
give the target back bit for bit), with each tensor's target dtype recorded, so 16-bit targets
round-trip exactly and float32 targets within one rounding step. Tensors the base lacks must be
multimodal (projector, towers, image_newline) and are stored as they are; embed_tokens / lm_head
may have extra rows (added tokens): the base covers the top-left block. Everything is checked from
the file headers before a byte is written. Delta folders carry `llava_serve_delta` in config.json
so the loader refuses to serve one by mistake.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from model_runtime.checkpoint.folder import (
    DELTA_KEY,
    PICKLE_SUFFIXES,
    is_language_model_key,
    resolve_checkpoint,
    weight_files,
)
from model_runtime.checkpoint.safetensors_io import INDEX_NAME, SafetensorsFile, TensorInfo
from model_runtime.checkpoint_tools.safetensors_write import write_shards
from model_runtime.config import ConfigError, read_config_dict

TARGET_DTYPES_KEY = "target_dtypes"  # shard metadata: JSON {tensor name: torch dtype name}
RESIZABLE = ("model.embed_tokens.weight", "lm_head.weight")  # may carry rows for added tokens
SIXTEEN_BIT = (torch.bfloat16, torch.float16)
IGNORED_BASE_KEYS = ("rotary_emb.inv_freq",)  # buffers old Llama checkpoints saved
NOT_COPIED = (INDEX_NAME, "config.json")
NOT_COPIED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


class DeltaError(ConfigError):
    """The checkpoints do not fit together (or the output exists); nothing was written."""


@dataclass(frozen=True)
class DeltaReport:
    out: Path
    num_tensors: int
    num_float64: int  # make_delta: tensors stored in float64 to keep the round trip exact
    num_copied: int  # tensors the base lacks (multimodal), stored / copied as they are


class _Checkpoint:
    """Tensor name -> (file, header entry) over all shards, from the headers only."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self.shards = [SafetensorsFile(f) for f in weight_files(path)]
        self.where = {name: shard for shard in self.shards for name in shard.tensors}

    def info(self, name: str) -> TensorInfo:
        return self.where[name].tensors[name]

    def read(self, name: str) -> torch.Tensor:
        return self.where[name].read(name)

    def multimodal_names(self) -> list[str]:
        return sorted(n for n in self.where if not is_language_model_key(n))


def _open_checked(
    base: str | Path, other: str | Path, role: str, out: str | Path
) -> tuple[_Checkpoint, _Checkpoint, Path]:
    """Both checkpoints from their headers, every check done before anything is written."""
    base_ckpt = _Checkpoint(resolve_checkpoint(base), "base")
    other_ckpt = _Checkpoint(resolve_checkpoint(other), role)
    read_config_dict(other_ckpt.path)  # its config.json is copied to the output: it must exist (no auto_map)
    out = _check_out(Path(out))
    _check_base_is_plain(base_ckpt)
    _check_pairing(base_ckpt, other_ckpt)
    return base_ckpt, other_ckpt, out


def make_delta(base: str | Path, target: str | Path, out: str | Path) -> DeltaReport:
    base_ckpt, target_ckpt, out = _open_checked(base, target, "target", out)
    num_float64 = num_copied = 0

    def shards():
        nonlocal num_float64, num_copied
        bar = tqdm(total=len(target_ckpt.where), desc="make-delta", unit="tensor")
        for shard in target_ckpt.shards:
            tensors: dict[str, torch.Tensor] = {}
            for name in shard.tensors:
                value = shard.read(name)
                if name in base_ckpt.where:
                    tensors[name] = _subtract(value, base_ckpt.read(name))
                    num_float64 += tensors[name].dtype == torch.float64
                else:
                    tensors[name] = value
                    num_copied += 1
                bar.update()
            dtypes = {name: str(shard.tensors[name].dtype).removeprefix("torch.") for name in shard.tensors}
            yield tensors, {DELTA_KEY: "1", TARGET_DTYPES_KEY: json.dumps(dtypes)}
        bar.close()

    write_shards(out, shards(), len(target_ckpt.shards))
    config = json.loads((target_ckpt.path / "config.json").read_text())
    config[DELTA_KEY] = "weights are target - base: rebuild the model with `llava-serve apply-delta`"
    _copy_side_files(target_ckpt.path, out, config)
    return DeltaReport(out, len(target_ckpt.where), num_float64, num_copied)


def apply_delta(base: str | Path, delta: str | Path, out: str | Path) -> DeltaReport:
    base_ckpt, delta_ckpt, out = _open_checked(base, delta, "delta", out)
    num_copied = 0

    def shards():
        nonlocal num_copied
        bar = tqdm(total=len(delta_ckpt.where), desc="apply-delta", unit="tensor")
        for shard in delta_ckpt.shards:
            target_dtypes = json.loads(shard.metadata.get(TARGET_DTYPES_KEY, "{}"))
            tensors: dict[str, torch.Tensor] = {}
            for name in shard.tensors:
                value = shard.read(name)
                # ORIG deltas (converted from .bin) record nothing: the target has the delta's dtype
                dtype = getattr(torch, target_dtypes[name]) if name in target_dtypes else value.dtype
                if name in base_ckpt.where:
                    tensors[name] = _add(value, base_ckpt.read(name)).to(dtype)
                else:
                    tensors[name] = value.to(dtype)
                    num_copied += 1
                bar.update()
            yield tensors, {}
        bar.close()

    write_shards(out, shards(), len(delta_ckpt.shards))
    config = json.loads((delta_ckpt.path / "config.json").read_text())
    config.pop(DELTA_KEY, None)
    _copy_side_files(delta_ckpt.path, out, config)
    return DeltaReport(out, len(delta_ckpt.where), 0, num_copied)


# -- arithmetic ----------------------------------------------------------------------------------
def _subtract(target: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    delta = _blockwise(target.float(), base.float(), sign=-1)
    if target.dtype in SIXTEEN_BIT and not torch.equal(_add(delta, base).to(target.dtype), target):
        # |target| << |base| somewhere: float32 cannot hold the difference finely enough
        delta = _blockwise(target.double(), base.double(), sign=-1)
    return delta


def _add(delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    work = torch.float64 if delta.dtype == torch.float64 else torch.float32
    return _blockwise(delta.to(work), base.to(work), sign=1)


def _blockwise(value: torch.Tensor, base: torch.Tensor, sign: int) -> torch.Tensor:
    """value +/- base; a base with fewer rows/columns covers the top-left block (added tokens)."""
    if value.shape == base.shape:
        return value + base if sign > 0 else value - base
    result = value.clone()
    block = tuple(slice(0, n) for n in base.shape)
    result[block] += base if sign > 0 else -base
    return result


# -- checks ----------------------------------------------------------------------------------------
def _check_out(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        patched = [f for f in out.glob("*.safetensors") if any(
            not is_language_model_key(n) for n in SafetensorsFile(f).names())]
        if patched:
            raise DeltaError(f"{out} already holds a patched model (projector weights in {patched[0].name}); "
                             "nothing written")
        raise DeltaError(f"{out} is not empty; choose a new folder")
    return out


def _check_base_is_plain(base: _Checkpoint) -> None:
    multimodal = base.multimodal_names()
    if multimodal:
        raise DeltaError(
            f"the base {base.path} already holds multimodal weights ({multimodal[0]}, ...): it is an already "
            "patched LLaVA model, not the original language model; nothing written"
        )


def _check_pairing(base: _Checkpoint, other: _Checkpoint) -> None:
    """Every base tensor pairs with one of `other` of the same shape (or a larger embedding)."""
    problems = []
    for name in sorted(base.where):
        if name.endswith(IGNORED_BASE_KEYS):
            continue
        if name not in other.where:
            problems.append(f"{name} is in the base but not in the {other.role}")
            continue
        b, o = base.info(name).shape, other.info(name).shape
        grows = name in RESIZABLE and len(b) == len(o) and all(x >= y for x, y in zip(o, b, strict=True))
        if b != o and not grows:
            problems.append(f"{name}: base {list(b)} vs {other.role} {list(o)}")
    stray = [n for n in other.where if n not in base.where and is_language_model_key(n)]
    problems += [f"{name} is in the {other.role} but not in the base" for name in sorted(stray)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DeltaError(f"{base.path} is not the base of {other.path}: {shown}; nothing written")


# -- output ----------------------------------------------------------------------------------------
def _copy_side_files(source: Path, out: Path, config: dict) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in sorted(source.iterdir()):
        if file.is_file() and file.suffix not in NOT_COPIED_SUFFIXES and file.name not in NOT_COPIED:
            shutil.copyfile(file, out / file.name)
