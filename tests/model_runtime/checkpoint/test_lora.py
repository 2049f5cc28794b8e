"""LoRA: an adapter made with peft here; unmerged peft == merged at load == merge-lora output."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from model_runtime import ConfigError, load_pretrained_model
from model_runtime.checkpoint_tools import make_demo
from server.cli import main as cli
from testkit.checkpoints import logits_of

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def lora_folder(tiny_checkpoint, tmp_path_factory):
    """ORIG's LoRA layout (config.json, adapter_config.json, adapter_model.safetensors,
    non_lora_trainables.safetensors) and the logits of the same adapter applied unmerged by peft."""
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=r".*layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.up_proj)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(loaded.model, config)
    with torch.no_grad():  # the projector is trained in full (it goes to non_lora_trainables)
        projector = peft_model.base_model.model.model.mm_projector
        for p in projector.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    peft_model.save_pretrained(folder)
    trainables = {f"base_model.model.{n}": p.detach().clone()
                  for n, p in peft_model.base_model.model.named_parameters() if "mm_projector" in n}
    save_file(trainables, folder / "non_lora_trainables.safetensors")
    shutil.copyfile(Path(tiny_checkpoint) / "config.json", folder / "config.json")
    unmerged = logits_of(loaded)  # loaded.model now runs through peft's LoRA layers, unmerged
    assert any("lora_A" in n for n, _ in loaded.model.named_parameters())
    return folder, unmerged


def test_merged_at_load_and_merge_lora_equal_unmerged_peft(lora_folder, tiny_checkpoint, tmp_path, capsys):
    folder, unmerged = lora_folder
    base_logits = logits_of(load_pretrained_model(tiny_checkpoint, dtype="float32"))
    assert (unmerged - base_logits).abs().max() > 100 * TOLERANCE  # the adapter changes the model

    at_load = load_pretrained_model(folder, model_base=tiny_checkpoint, dtype="float32")
    assert at_load.kind == "lora"
    assert not any("lora" in n for n, _ in at_load.model.named_parameters())
    assert (logits_of(at_load) - unmerged).abs().max() <= TOLERANCE

    out = tmp_path / "merged"
    assert cli(["merge-lora", "--base", tiny_checkpoint, "--adapter", str(folder), "--out", str(out),
                "--dtype", "float32"]) == 0
    assert "merged checkpoint" in capsys.readouterr().out
    merged = load_pretrained_model(out)
    assert merged.kind == "full" and merged.dtype == torch.float32
    assert (logits_of(merged) - unmerged).abs().max() <= TOLERANCE


def test_lora_merges_into_a_quantized_base(lora_folder, tiny_checkpoint):
    folder, unmerged = lora_folder
    loaded = load_pretrained_model(folder, model_base=tiny_checkpoint, quantization="bitsandbytes-8bit")
    assert loaded.quantization == "bitsandbytes-8bit"
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    # int8 re-quantization of the merged weights (and float16 compute): measured 0.017
    assert (logits_of(loaded) - unmerged).abs().max() < 0.05


def test_lora_refusals(lora_folder, tiny_checkpoint, tmp_path):
    folder, _ = lora_folder
    with pytest.raises(ConfigError, match="pass model_base"):
        load_pretrained_model(folder)
    other = make_demo("tiny", tmp_path / "other", overrides={"num_hidden_layers": 3})
    with pytest.raises(ConfigError, match="num_hidden_layers: checkpoint 2 vs base 3"):
        load_pretrained_model(folder, model_base=other)
    with pytest.raises(ConfigError, match="full checkpoint"):
        load_pretrained_model(tiny_checkpoint, model_base=tiny_checkpoint)
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ConfigError, match="llava-serve convert-bin"):
        load_pretrained_model(pickled, model_base=tiny_checkpoint)
    assert cli(["merge-lora", "--base", tiny_checkpoint, "--adapter", tiny_checkpoint,
                "--out", str(tmp_path / "m")]) == 2  # not an adapter folder
    assert not (tmp_path / "m").exists()
