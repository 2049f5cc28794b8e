"""make-delta / apply-delta: exact round trips, added-token rows, refusals, memory near one shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_runtime import ConfigError, load_pretrained_model
from model_runtime.checkpoint.folder import is_language_model_key
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.delta import _add, _subtract
from server.cli import main as cli
from testkit.checkpoints import PEAK_SCRIPT, logits_of, read_all, write_checkpoint
from tests.model_runtime.checkpoint.conftest import language_model_only


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    """A bfloat16 LLaVA target and an independent plain-LM base of the same shapes."""
    root = tmp_path_factory.mktemp("delta")
    target = make_demo("tiny", root / "target", seed=0, overrides={"torch_dtype": "bfloat16"})
    other = make_demo("tiny", root / "other", seed=1, overrides={"torch_dtype": "bfloat16"})
    return language_model_only(other, root / "base"), target


def test_bfloat16_target_round_trips_bit_for_bit(bf16_pair, tmp_path, capsys):
    base, target = bf16_pair
    assert cli(["make-delta", "--base", str(base), "--target", str(target), "--out", str(tmp_path / "delta")]) == 0
    assert cli(["apply-delta", "--base", str(base), "--delta", str(tmp_path / "delta"),
                "--out", str(tmp_path / "rebuilt")]) == 0
    assert "wrote" in capsys.readouterr().out
    delta = read_all(tmp_path / "delta")
    expected, rebuilt = read_all(target), read_all(tmp_path / "rebuilt")
    assert set(rebuilt) == set(expected)
    for name, tensor in expected.items():
        assert rebuilt[name].dtype == tensor.dtype, name
        assert torch.equal(rebuilt[name].view(torch.int16), tensor.view(torch.int16)), name
    lm = [n for n in delta if n.startswith("model.layers.")]
    assert lm and all(delta[n].dtype in (torch.float32, torch.float64) for n in lm)
    assert not torch.equal(delta[lm[0]].to(torch.bfloat16), expected[lm[0]])  # a difference, not a copy
    assert json.loads((tmp_path / "rebuilt" / "config.json").read_text()) == json.loads(
        (target / "config.json").read_text())
    assert (tmp_path / "rebuilt" / "tokenizer.json").read_bytes() == (target / "tokenizer.json").read_bytes()
    with pytest.raises(ConfigError, match="apply-delta"):
        load_pretrained_model(tmp_path / "delta")
    assert torch.equal(logits_of(load_pretrained_model(tmp_path / "rebuilt")), logits_of(load_pretrained_model(target)))


def test_float32_target_within_one_rounding_step(tiny_checkpoint, tmp_path):
    target = Path(tiny_checkpoint)
    base = write_checkpoint(target, tmp_path / "base", {
        n: t + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
        for n, t in read_all(target).items() if is_language_model_key(n)
    })
    assert cli(["make-delta", "--base", str(base), "--target", str(target), "--out", str(tmp_path / "d")]) == 0
    assert cli(["apply-delta", "--base", str(base), "--delta", str(tmp_path / "d"), "--out", str(tmp_path / "t")]) == 0
    expected, rebuilt, base_tensors = read_all(target), read_all(tmp_path / "t"), read_all(base)
    eps = torch.finfo(torch.float32).eps
    for name, t in expected.items():
        assert rebuilt[name].dtype == torch.float32
        b = base_tensors.get(name, torch.zeros_like(t))
        assert ((rebuilt[name] - t).abs() <= eps * (t.abs() + b.abs())).all(), name


def test_float64_keeps_16bit_round_trip_exact_where_float32_cannot():
    base = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=torch.bfloat16)
    target = torch.tensor([1e-6, 3.0078125, 0.0, -1e-7], dtype=torch.bfloat16)  # |target| << |base|
    naive = (base.float() + (target.float() - base.float())).to(torch.bfloat16)
    assert not torch.equal(naive, target)
    delta = _subtract(target, base)
    assert delta.dtype == torch.float64
    assert torch.equal(_add(delta, base).to(torch.bfloat16), target)
    close = torch.tensor([1.0078125, 3.0, -2.0], dtype=torch.bfloat16)
    assert _subtract(close, base[:3]).dtype == torch.float32


def test_added_token_rows_take_the_base_in_the_top_left_block(tiny_checkpoint, tmp_path):
    target = Path(tiny_checkpoint)
    config = json.loads((target / "config.json").read_text())
    tensors = read_all(target)
    base_tensors = {n: t[:-3].clone() if n in ("model.embed_tokens.weight", "lm_head.weight") else t * 0.5
                    for n, t in tensors.items() if is_language_model_key(n)}
    base = write_checkpoint(target, tmp_path / "base", base_tensors,
                            config={**config, "vocab_size": config["vocab_size"] - 3})
    assert cli(["make-delta", "--base", str(base), "--target", str(target), "--out", str(tmp_path / "d")]) == 0
    delta = read_all(tmp_path / "d")
    assert torch.equal(delta["lm_head.weight"][-3:], tensors["lm_head.weight"][-3:])  # no base under new rows
    assert cli(["apply-delta", "--base", str(base), "--delta", str(tmp_path / "d"), "--out", str(tmp_path / "t")]) == 0
    rebuilt = read_all(tmp_path / "t")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert rebuilt[name].shape == tensors[name].shape
        assert torch.allclose(rebuilt[name], tensors[name], rtol=0, atol=1e-6)
    # the other way round (a base with MORE rows than the target) is no base of it
    assert cli(["make-delta", "--base", str(target), "--target", str(base), "--out", str(tmp_path / "x")]) == 2


def test_refusals_write_nothing(bf16_pair, tiny_checkpoint, tmp_path, capsys):
    base, target = bf16_pair
    delta, out = tmp_path / "delta", tmp_path / "out"
    assert cli(["make-delta", "--base", str(base), "--target", str(target), "--out", str(delta)]) == 0
    assert cli(["apply-delta", "--base", str(base), "--delta", str(delta), "--out", str(out)]) == 0
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    capsys.readouterr()

    assert cli(["apply-delta", "--base", str(base), "--delta", str(delta), "--out", str(out)]) == 2
    assert "already holds a patched model" in capsys.readouterr().err
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before

    assert cli(["apply-delta", "--base", str(target), "--delta", str(delta), "--out", str(tmp_path / "o2")]) == 2
    assert "already patched" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()

    wrong = language_model_only(make_demo("tiny", tmp_path / "wide", overrides={"intermediate_size": 96}),
                                tmp_path / "wrong_base")
    assert cli(["apply-delta", "--base", str(wrong), "--delta", str(delta), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "is not the base" in err and "mlp" in err and not (tmp_path / "o3").exists()

    assert cli(["apply-delta", "--base", str(tmp_path / "nowhere"), "--delta", str(delta),
                "--out", str(tmp_path / "o4")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err

    (delta / "config.json").unlink()
    assert cli(["apply-delta", "--base", str(base), "--delta", str(delta), "--out", str(tmp_path / "o5")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "o5").exists()


MiB = 1 << 20
OVERHEAD = 32 * MiB  # imports touched on first use, allocator slack: measured 16-18 MiB with any shard size


def test_apply_delta_peak_memory_stays_near_one_shard(tmp_path):
    # 16 layers of a 256-wide LM: ~31 MiB in bfloat16, ~61 MiB as a float32 delta in shards of <= 4 MiB;
    # measured growth: 16-18 MiB + ~1.7 x the largest delta shard
    target = make_demo("tiny", tmp_path / "target", max_shard_bytes=2 * MiB, overrides={
        "torch_dtype": "bfloat16", "num_hidden_layers": 16, "hidden_size": 256, "intermediate_size": 1024})
    base = write_checkpoint(target, tmp_path / "base", {
        n: (t.float() * 0.99).to(torch.bfloat16) for n, t in read_all(target).items() if is_language_model_key(n)
    }, max_shard_bytes=2 * MiB)
    assert cli(["make-delta", "--base", str(base), "--target", str(target), "--out", str(tmp_path / "d")]) == 0
    delta_shards = sorted((tmp_path / "d").glob("*.safetensors"))
    largest = max(f.stat().st_size for f in delta_shards)
    total = sum(f.stat().st_size for f in delta_shards)
    bound = 3 * largest + OVERHEAD
    assert len(delta_shards) >= 8 and total > bound  # holding the delta whole would break the bound
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(base), str(tmp_path / "d"), str(tmp_path / "t")],
                          capture_output=True, text=True, check=True)
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["before"]
    print(f"apply-delta: largest delta shard {largest / MiB:.1f} MiB, delta {total / MiB:.1f} MiB, "
          f"peak RSS growth {growth / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB")
    assert growth <= bound
    assert len(list((tmp_path / "t").glob("*.safetensors"))) == len(delta_shards)
