"""Safetensors files one tensor at a time, and sharded checkpoints written shard by shard.

`SafetensorsFile` reads a file's header and then single tensors with plain reads (no mmap), so a
tool that walks a checkpoint holds only the tensors it is working on, never a whole file.
`write_shards` writes a state dict (or a stream of tensor groups) as
`model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` (one shard: plain
`model.safetensors`), the layout transformers loads. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model_runtime.config import ConfigError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 << 20  # the safetensors reference implementation's own limit
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 << 30  # transformers' default for save_pretrained


class CheckpointFileError(ConfigError):
    """A weights file that is missing, truncated or not safetensors; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """One .safetensors file: header parsed at open, tensors read one by one on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise CheckpointFileError(f"{self.path} is too short to be a safetensors file")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > MAX_HEADER_BYTES:
                    raise CheckpointFileError(f"{self.path}: header of {header_len} bytes; not a safetensors file")
                header = json.loads(f.read(header_len))
        except FileNotFoundError as e:
            raise CheckpointFileError(f"{self.path} does not exist") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointFileError(f"{self.path}: unreadable safetensors header") from e
        self.data_start = 8 + header_len
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if entry["dtype"] not in DTYPES:
                raise CheckpointFileError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
            begin, end = entry["data_offsets"]
            self.tensors[name] = TensorInfo(name, DTYPES[entry["dtype"]], tuple(entry["shape"]), begin, end)
        size = os.path.getsize(self.path)
        if any(self.data_start + t.end > size for t in self.tensors.values()):
            raise CheckpointFileError(f"{self.path} is truncated")

    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        buffer = bytearray(info.nbytes)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + info.begin)
            if f.readinto(buffer) != info.nbytes:
                raise CheckpointFileError(f"{self.path}: short read for {name}")
        if not buffer:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(buffer, dtype=info.dtype).reshape(info.shape)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensors:
            yield name, self.read(name)


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names (in the given order) into shards of at most `max_shard_bytes` each
    (a single tensor larger than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes.items():
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def write_shards(
    out: str | Path,
    shards: Iterable[tuple[Mapping[str, torch.Tensor], Mapping[str, str]]],
    num_shards: int,
) -> list[Path]:
    """Write `num_shards` (tensors, metadata) groups, one file each, as they arrive (one group in
    memory at a time), then the index when there is more than one. Returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    written: list[Path] = []
    for file_name, (tensors, metadata) in zip(shard_file_names(num_shards), shards, strict=True):
        save_tensors(tensors, out / file_name, metadata)
        weight_map.update(dict.fromkeys(tensors, file_name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        written.append(out / file_name)
    if num_shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        written.append(out / INDEX_NAME)
    return written


def save_tensors(tensors: Mapping[str, torch.Tensor], file: Path, metadata: Mapping[str, str] | None = None) -> None:
    """One safetensors file (tensors sharing storage are cloned; safetensors refuses them)."""
    tensors = {k: v.contiguous() for k, v in _unshare(tensors).items()}
    save_file(tensors, file, metadata={"format": "pt", **(metadata or {})})


def save_state_dict(
    state: Mapping[str, torch.Tensor], out: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: Mapping[str, str] | None = None, progress: str | None = None,
) -> list[Path]:
    """A whole in-memory state dict -> sharded safetensors (`progress`: a tqdm bar's label)."""
    plan = plan_shards({k: v.numel() * v.element_size() for k, v in state.items()}, max_shard_bytes)
    groups = (({k: state[k] for k in names}, metadata or {}) for names in plan)
    if progress:
        groups = tqdm(groups, total=len(plan), desc=progress, unit="shard")
    return write_shards(out, groups, len(plan))


def _unshare(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[tuple[int, int]] = set()
    result: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        result[name] = tensor.clone() if key in seen and tensor.numel() else tensor
        seen.add(key)
    return result
