"""load_pretrained_model: hub ids, dtypes, device maps, tokens and embedding resize, context length."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from model_runtime import ConfigError, load_pretrained_model
from model_runtime.checkpoint import precision
from model_runtime.checkpoint.loader import context_length
from model_runtime.checkpoint.tokens import IM_END_TOKEN, IM_PATCH_TOKEN, IM_START_TOKEN
from model_runtime.checkpoint_tools import make_demo
from testkit.checkpoints import logits_of, read_all, write_checkpoint


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    return loaded, logits_of(loaded)


def test_hub_id_resolves_through_the_hub_cache(tiny_checkpoint, reference, tmp_path, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--llava-serve--tiny-demo"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = load_pretrained_model("llava-serve/tiny-demo", dtype="float32")
    assert torch.equal(logits_of(loaded), reference[1])
    with pytest.raises(ConfigError, match="not in the local hub cache"):
        load_pretrained_model("llava-serve/absent")
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        load_pretrained_model(str(tmp_path / "absent"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtypes(tiny_checkpoint, reference, dtype):
    loaded = load_pretrained_model(tiny_checkpoint, dtype=dtype)
    assert loaded.dtype == getattr(torch, dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    assert (logits_of(loaded) - reference[1]).abs().max() < 0.05
    assert loaded.quantization == "none"


def test_auto_dtype_and_bad_dtype(tiny_checkpoint, reference):
    assert reference[0].dtype == torch.float32
    assert load_pretrained_model(tiny_checkpoint).dtype == torch.float32  # the config's torch_dtype
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        load_pretrained_model(tiny_checkpoint, dtype="float8")


@pytest.mark.parametrize(("flags", "expected"), [("avx2 fma", torch.float32), ("avx2 avx512f amx_bf16", torch.bfloat16)])
def test_auto_dtype_follows_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    """A bfloat16 checkpoint is served in bfloat16 only where the CPU multiplies it natively."""
    folder = make_demo("tiny", tmp_path / "bf16", seed=0, overrides={"torch_dtype": "bfloat16"})
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse4_2 {flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    loaded = load_pretrained_model(folder)
    assert loaded.dtype == expected and {p.dtype for p in loaded.model.parameters()} == {expected}
    assert loaded.dtype_reason == precision.choose_dtype(torch.bfloat16, "cpu", frozenset(flags.split())).reason
    assert loaded.device_kind == "cpu"
    assert load_pretrained_model(folder, dtype="bfloat16").dtype_reason == "--dtype bfloat16"


def test_device_map_auto_and_single_device(tiny_checkpoint, reference):
    for device_map in ("auto", "cpu", {"": "cpu"}):
        loaded = load_pretrained_model(tiny_checkpoint, dtype="float32", device_map=device_map)
        assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
        assert torch.equal(logits_of(loaded), reference[1])


def test_image_tokens_are_added_and_embeddings_resized_as_orig(tiny_checkpoint, reference, tmp_path):
    folder = tmp_path / "tokens"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["mm_use_im_patch_token"]  # absent means TRUE (ORIG builder.py)
    config["mm_use_im_start_end"] = True
    (folder / "config.json").write_text(json.dumps(config))
    ref, ref_logits = reference
    num_ids = len(ref.tokenizer)
    loaded = load_pretrained_model(folder, dtype="float32")
    vocab = loaded.tokenizer.get_vocab()
    assert [vocab[t] for t in (IM_PATCH_TOKEN, IM_START_TOKEN, IM_END_TOKEN)] == [num_ids, num_ids + 1, num_ids + 2]
    embed = loaded.model.get_input_embeddings().weight
    assert embed.shape[0] == loaded.model.lm_head.weight.shape[0] == num_ids + 3
    assert torch.equal(embed[:num_ids], ref.model.get_input_embeddings().weight)
    assert torch.allclose(embed[num_ids:], embed[:num_ids].mean(0).expand(3, -1), atol=1e-6)
    assert torch.equal(logits_of(loaded)[:, :num_ids], ref_logits)


def test_padded_vocabulary_shrinks_to_the_tokenizer(tiny_checkpoint, reference, tmp_path):
    """Qwen2 ships 152064 rows for 151646 ids: ORIG's resize drops the padding rows."""
    src = Path(tiny_checkpoint)
    tensors = read_all(src)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = torch.cat([tensors[name], torch.randn(10, tensors[name].shape[1])])
    config = json.loads((src / "config.json").read_text())
    padded = {**config, "vocab_size": config["vocab_size"] + 10}
    folder = write_checkpoint(src, tmp_path / "padded", tensors, config=padded)
    loaded = load_pretrained_model(folder, dtype="float32")
    assert loaded.model.lm_head.weight.shape[0] == len(loaded.tokenizer) == config["vocab_size"]
    assert torch.equal(logits_of(loaded), reference[1])


def test_context_length_fallbacks():
    assert context_length({"max_sequence_length": 100, "max_position_embeddings": 200}) == 100
    assert context_length({"max_position_embeddings": 200, "tokenizer_model_max_length": 300}) == 200
    assert context_length({"tokenizer_model_max_length": 300}) == 300
    assert context_length({}) == 2048


def test_tensor_shapes_that_contradict_the_config_are_refused(tiny_checkpoint, tmp_path):
    src = Path(tiny_checkpoint)
    tensors = read_all(src)
    tensors["model.mm_projector.0.weight"] = torch.zeros(64, 16)
    folder = write_checkpoint(src, tmp_path / "bad", tensors)
    with pytest.raises(ConfigError, match=r"shapes differ .*model\.mm_projector\.0\.weight"):
        load_pretrained_model(folder)


def test_tied_checkpoint_without_lm_head_loads_tied(tmp_path):
    """0.5B Qwen2 checkpoints tie lm_head to embed_tokens and ship no lm_head.weight (spec 9.1)."""
    folder = make_demo("tiny", tmp_path / "tied", overrides={"tie_word_embeddings": True})
    assert "lm_head.weight" not in read_all(folder)
    model = load_pretrained_model(folder, quantization="bitsandbytes-8bit").model
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
