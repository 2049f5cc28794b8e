"""Checkpoints taken apart and put back together, the logits of one fixed prompt, and the probe that
measures apply-delta's peak memory: for the checkpoint-tool tests and bench/checkpoint_tools.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from model_runtime import ChatTurn
from model_runtime.checkpoint.folder import weight_files
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.checkpoint_tools.safetensors_write import save_state_dict
from testkit.media import random_image

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
# run in a fresh process as `python -c PEAK_SCRIPT BASE DELTA OUT`; prints {"before": RSS, "peak": VmHWM}
PEAK_SCRIPT = """
import json, re, sys
from model_runtime.checkpoint_tools import apply_delta

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
apply_delta(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def logits_of(loaded, with_image: bool = True) -> torch.Tensor:
    """Float32 logits [L, V] of one fixed prompt (one image when `with_image`, so the tower and
    projector take part)."""
    p = loaded.processor
    media = [p.process_image(random_image(100, 60, seed=5), single_crop=False)] if with_image else []
    text = ("<image>\n" if with_image else "") + "Describe the picture in a few words, please."
    prompt = p.build_prompt([ChatTurn("user", text)], media)
    model = loaded.model
    with torch.no_grad():
        items = model.encode_media(media)
        embeds, mask, positions = model.prepare_inputs_for_multimodal([prompt.token_ids], [items])
        return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[0].float()


def read_all(path: Path) -> dict[str, torch.Tensor]:
    return {name: t for file in weight_files(Path(path)) for name, t in SafetensorsFile(file)}


def write_checkpoint(src: Path, out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = 1 << 40,
                     config: dict | None = None) -> Path:
    """`tensors` as a checkpoint at `out`, with `src`'s config (or `config`) and tokenizer files."""
    out.mkdir(parents=True)
    save_state_dict(tensors, out, max_shard_bytes)
    for name in SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
