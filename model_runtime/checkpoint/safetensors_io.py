"""Safetensors files read one tensor at a time: what loading a checkpoint needs of the format.

`SafetensorsFile` reads a file's header and then single tensors with plain reads (no mmap), so a
tool that walks a checkpoint holds only the tensors it is working on, never a whole file. A file
that is missing, truncated or not safetensors raises `CheckpointFileError` naming it. Writing
(sharded checkpoints) is the checkpoint tools' part: model_runtime/checkpoint_tools/safetensors_write.py.
No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

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
