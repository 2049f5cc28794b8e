"""The language model's linear shapes on this CPU: PyTorch's default matmul against oneDNN-packed
weights (model_runtime/arch/cpu_linear.py), side by side, per number of rows; and whether a row's
result depends on its batch. Prints a table.

    .venv/bin/python bench/linear_bench.py --model .demo/realistic --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.arch.cpu_linear import PackedLinear


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=".demo/realistic", help="a checkpoint folder (its config.json)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,8,16,64,256,1024")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.loads((Path(args.model) / "config.json").read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes = {"mlp up/gate": (h, inter), "mlp down": (inter, h), "attention out": (h, h), "output head": (h, vocab)}
    print(f"{'layer':<14} {'rows':>5} {'plain ms':>9} {'packed ms':>10} {'speed-up':>8} {'plain GB/s':>10} "
          f"{'packed GB/s':>11}  batch-independent rows (plain / packed)")
    for name, (inner, outer) in shapes.items():
        torch.manual_seed(0)
        linear = nn.Linear(inner, outer, bias=False)
        packed = PackedLinear(linear)
        weight_bytes = linear.weight.numel() * 4
        with torch.inference_mode():
            for rows in (int(r) for r in args.rows.split(",")):
                x = torch.randn(rows, inner)
                plain_s = best_of(lambda: F.linear(x, linear.weight), args.repeats)  # noqa: B023
                packed_s = best_of(lambda: packed(x), args.repeats)  # noqa: B023
                same_plain = torch.equal(F.linear(x, linear.weight)[:1], F.linear(x[:1], linear.weight))
                same_packed = torch.equal(packed(x)[:1], packed(x[:1]))
                print(f"{name:<14} {rows:>5} {plain_s * 1e3:>9.2f} {packed_s * 1e3:>10.2f} {plain_s / packed_s:>8.2f} "
                      f"{weight_bytes / plain_s / 1e9:>10.1f} {weight_bytes / packed_s / 1e9:>11.1f}  "
                      f"{same_plain} / {same_packed}")


if __name__ == "__main__":
    main()
