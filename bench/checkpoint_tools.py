"""Print the numbers docs/CHECKPOINTS.md quotes: bitsandbytes memory and logit error on the `small`
demo model, and apply-delta's peak memory against the shard size.

  quantization   for demo seeds 0..2: decoder-layer and whole-model weight bytes of 8-bit / 4-bit
                 relative to bfloat16, and the logits' max |diff|, relative RMS diff and argmax
                 agreement against the bfloat16 model on one text prompt (CPU)
  delta-memory   make-delta then apply-delta (in a fresh process) on a 16-layer, 256-wide bfloat16
                 LM sharded at 1..16 MiB: largest delta shard and peak RSS growth of apply-delta

Usage (from the repository root): .venv/bin/python bench/checkpoint_tools.py [quantization|delta-memory]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model_runtime import load_pretrained_model  # noqa: E402
from model_runtime.checkpoint.folder import is_language_model_key  # noqa: E402
from model_runtime.checkpoint.quantize import weight_bytes  # noqa: E402
from model_runtime.checkpoint_tools import make_delta, make_demo  # noqa: E402
from testkit.checkpoints import PEAK_SCRIPT, logits_of, read_all, write_checkpoint  # noqa: E402

MiB = 1 << 20


def quantization(root: Path) -> None:
    print(f"{'seed':>4} {'mode':18} {'layers':>7} {'whole':>6} {'max|diff|':>10} {'rel RMS':>8} {'argmax':>7}")
    for seed in range(3):
        path = make_demo("small", root / f"small{seed}", seed=seed)
        ref = load_pretrained_model(path, dtype="bfloat16")
        ref_logits = logits_of(ref, with_image=False)
        for mode in ("bitsandbytes-8bit", "bitsandbytes-4bit"):
            loaded = load_pretrained_model(path, quantization=mode)
            diff = logits_of(loaded, with_image=False) - ref_logits
            layers = weight_bytes(loaded.model.model.layers) / weight_bytes(ref.model.model.layers)
            whole = weight_bytes(loaded.model) / weight_bytes(ref.model)
            agree = (diff + ref_logits).argmax(-1).eq(ref_logits.argmax(-1)).float().mean()
            print(f"{seed:>4} {mode:18} {layers:7.3f} {whole:6.3f} {diff.abs().max():10.4f} "
                  f"{diff.norm() / ref_logits.norm():8.4f} {agree:7.2f}")


def delta_memory(root: Path) -> None:
    print(f"{'shard cap':>9} {'shards':>6} {'largest':>8} {'delta':>7} {'peak RSS growth':>15} {'bound 3x+32':>11}")
    for cap in (1, 2, 4, 8, 16):
        work = root / f"cap{cap}"
        target = make_demo("tiny", work / "target", max_shard_bytes=cap * MiB, overrides={
            "torch_dtype": "bfloat16", "num_hidden_layers": 16, "hidden_size": 256, "intermediate_size": 1024})
        base = write_checkpoint(target, work / "base", {
            n: (t.float() * 0.99).to(torch.bfloat16) for n, t in read_all(target).items() if is_language_model_key(n)
        }, max_shard_bytes=cap * MiB)
        make_delta(base, target, work / "delta")
        shards = [f.stat().st_size for f in (work / "delta").glob("*.safetensors")]
        done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(base), str(work / "delta"), str(work / "out")],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        rss = json.loads(done.stdout.strip().splitlines()[-1])
        growth = (rss["peak"] - rss["before"]) / MiB
        print(f"{cap:>5} MiB {len(shards):>6} {max(shards) / MiB:6.1f}Mi {sum(shards) / MiB:5.1f}Mi "
              f"{growth:13.1f}Mi {3 * max(shards) / MiB + 32:9.1f}Mi")


def main() -> int:
    which = sys.argv[1:] or ["quantization", "delta-memory"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in which:
            print(f"\n== {name}")
            {"quantization": quantization, "delta-memory": delta_memory}[name](Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
