"""bitsandbytes 8-bit / 4-bit on the CPU, on the `small` demo model: what is quantized, memory,
logits within the tolerance docs/CHECKPOINTS.md states, and generation through the real engine."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
from torch import nn

from model_runtime import ChatTurn, Engine, Request, SamplingParams, load_pretrained_model
from model_runtime.checkpoint.quantize import cpu_slowdown, quantized_module_names, weight_bytes
from testkit.checkpoints import logits_of
from tests.conftest import random_image

# Measured on `small` (seeds 0-2; bench/checkpoint_tools.py), bf16 reference, text prompt: 8-bit max |diff|
# 0.039-0.043, relative RMS 0.025-0.027; 4-bit max |diff| 0.32-0.44, relative RMS 0.24-0.30 (random weights,
# logits std ~0.32). The tolerances below leave ~1.6x head room; docs/CHECKPOINTS.md states them.
CASES = {
    "bitsandbytes-8bit": {"max_ratio": 0.6, "max_abs": 0.08, "max_rel_rms": 0.05, "quantized": bnb.nn.Linear8bitLt},
    "bitsandbytes-4bit": {"max_ratio": 0.35, "max_abs": 0.8, "max_rel_rms": 0.45, "quantized": bnb.nn.Linear4bit},
}


@pytest.fixture(scope="module")
def reference(small_checkpoint):
    loaded = load_pretrained_model(small_checkpoint, dtype="bfloat16")
    return loaded, logits_of(loaded, with_image=False)


@pytest.mark.parametrize("quantization", list(CASES))
def test_quantized_load_memory_logits_and_generation(small_checkpoint, reference, quantization):
    case = CASES[quantization]
    ref, ref_logits = reference
    loaded = load_pretrained_model(small_checkpoint, quantization=quantization)
    assert loaded.quantization == quantization
    model = loaded.model

    quantized = quantized_module_names(model)
    decoder_linears = [n for n, m in ref.model.named_modules()
                       if n.startswith("model.layers.") and isinstance(m, nn.Linear)]
    assert sorted(quantized) == sorted(decoder_linears)
    assert all(isinstance(model.get_submodule(n), case["quantized"]) for n in quantized)
    tower_linear = "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1"
    for kept in ("lm_head", "model.mm_projector.0", tower_linear):
        module = model.get_submodule(kept)
        assert type(module) is nn.Linear and module.weight.dtype == loaded.dtype, kept

    ratio = weight_bytes(model.model.layers) / weight_bytes(ref.model.model.layers)
    assert ratio <= case["max_ratio"]

    diff = logits_of(loaded, with_image=False) - ref_logits
    assert diff.abs().max() <= case["max_abs"]
    assert diff.norm() / ref_logits.norm() <= case["max_rel_rms"]

    engine = Engine(model, loaded.tokenizer, loaded.eos_token_ids)
    p = loaded.processor
    media = [p.process_image(random_image(64, 48), single_crop=True)]
    prompt = p.build_prompt([ChatTurn("user", "<image>\nWhat is this?")], media)
    engine.add_request(Request("q", prompt, media, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)))
    tokens = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
    assert len(tokens) == 4 and all(0 <= t < len(loaded.tokenizer) for t in tokens)


def test_unknown_quantization_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="quantization='int3'"):
        load_pretrained_model(tiny_checkpoint, quantization="int3")
    assert weight_bytes(nn.Linear(4, 2, bias=False)) == 4 * 2 * 4


def test_cpu_slowdown_rule_for_each_flag_set():
    avx2 = frozenset({"avx", "avx2", "fma"})
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert cpu_slowdown("none", "cpu", avx2) is None
    assert cpu_slowdown("bitsandbytes-4bit", "cuda", avx2) is None
    assert "converting both operands to float32" in cpu_slowdown("bitsandbytes-8bit", "cpu", avx2)
    assert cpu_slowdown("bitsandbytes-8bit", "cpu", avx512) is None  # torch._int_mm: about float32's speed
    assert "dequantized on every call" in cpu_slowdown("bitsandbytes-4bit", "cpu", avx512)
    assert "prefill" in cpu_slowdown("bitsandbytes-4bit", "cpu", avx512 | {"avx512_bf16"})
