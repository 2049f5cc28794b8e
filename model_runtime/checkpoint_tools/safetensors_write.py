"""Sharded safetensors checkpoints written shard by shard (the checkpoint tools' writer).

`write_shards` writes a state dict (or a stream of tensor groups) as
`model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` (one shard: plain
`model.safetensors`), the layout transformers loads; only the group being written is held in
memory. `save_tensors` writes one file; tensors that share storage are cloned first. No pickle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model_runtime.checkpoint.safetensors_io import INDEX_NAME, SINGLE_NAME

DEFAULT_MAX_SHARD_BYTES = 5 << 30  # transformers' default for save_pretrained


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


def save_tensors(
    tensors: Mapping[str, torch.Tensor], file: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """One safetensors file (tensors sharing storage are cloned; safetensors refuses them)."""
    tensors = {k: v.contiguous() for k, v in _unshare(tensors).items()}
    save_file(tensors, file, metadata={"format": "pt", **(metadata or {})})


def save_state_dict(
    state: Mapping[str, torch.Tensor],
    out: str | Path,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata: Mapping[str, str] | None = None,
    progress: str | None = None,
) -> list[Path]:
    """A whole in-memory state dict -> sharded safetensors (`progress`: a tqdm bar's label)."""
    plan = plan_shards({k: v.numel() * v.element_size() for k, v in state.items()}, max_shard_bytes)
    groups: Iterable[tuple[Mapping[str, torch.Tensor], Mapping[str, str]]]
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
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        result[name] = tensor.clone() if key in seen and tensor.numel() else tensor
        seen.add(key)
    return result
