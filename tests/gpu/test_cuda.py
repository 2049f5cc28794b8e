"""GPU checks: the model, engine and quantized loads on a CUDA device.

`bench/gpu_check.sh` runs these (`pytest -m gpu`); `make test` deselects them (pyproject addopts),
so on a machine without CUDA they are neither run nor counted. Run by hand without a GPU they fail.
"""

from __future__ import annotations

import pytest
import torch

from model_runtime import ChatTurn, Engine, EngineConfig, Request, SamplingParams, load_pretrained_model
from model_runtime.checkpoint.quantize import weight_bytes
from model_runtime.checkpoint_tools import make_demo
from tests.conftest import random_image

pytestmark = pytest.mark.gpu

KV = 256 * 2**20  # each engine's KV cache: auto would take 0.8 of the free GPU memory


def engine_for(loaded, **config) -> Engine:
    config.setdefault("kv_cache_memory", KV)
    return Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids, EngineConfig(**config))


@pytest.fixture(scope="module")
def device() -> str:
    if not torch.cuda.is_available():
        pytest.fail("tests marked gpu need a CUDA device; run them with bench/gpu_check.sh on a GPU host")
    return "cuda"


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> str:
    return str(make_demo("small", tmp_path_factory.mktemp("ckpt") / "small"))


def requests_for(loaded, count: int = 4, max_tokens: int = 8) -> list[Request]:
    out = []
    for i in range(count):
        media = [loaded.processor.process_image(random_image(40 + 30 * i, 90 - 10 * i, seed=i), single_crop=False)]
        prompt = loaded.processor.build_prompt([ChatTurn("user", "<image>\n" + "word " * (i + 1))], media)
        out.append(Request(f"r{i}", prompt, media, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                   ignore_eos=True)))
    return out


def run(engine: Engine, requests: list[Request]) -> dict[str, list[int]]:
    for r in requests:
        engine.add_request(r)
    ids: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            ids.setdefault(out.request_id, []).extend(out.new_token_ids)
    return ids


def test_tiny_model_on_cuda_matches_cpu(device, tiny_checkpoint, tiny_model):
    on_gpu = load_pretrained_model(tiny_checkpoint, dtype="float32", device=device)
    request = requests_for(tiny_model, count=1)[0]
    logits = {}
    for name, loaded in (("cpu", tiny_model), ("gpu", on_gpu)):
        model = loaded.model
        with torch.inference_mode():
            items = model.encode_media(request.media)
            embeds, mask, pos = model.prepare_inputs_for_multimodal([request.prompt.token_ids], [items])
            logits[name] = model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[0, -1].cpu()
    torch.testing.assert_close(logits["gpu"], logits["cpu"], atol=1e-4, rtol=1e-4)


def test_batched_equals_solo_on_cuda(device, tiny_checkpoint):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32", device=device)
    engine = engine_for(loaded)
    batched = run(engine, requests_for(loaded))
    for request in requests_for(loaded):
        assert run(engine, [request])[request.request_id] == batched[request.request_id]


def test_paged_attention_on_cuda_equals_dense(device):
    from tests.model_runtime.engine import test_kv

    torch.set_default_device(device)
    try:
        test_kv.test_decode_rows_and_prompt_chunks_equal_dense_attention_per_sequence()
    finally:
        torch.set_default_device("cpu")


def test_chunks_preemption_and_prefix_hits_on_cuda(device, tiny_checkpoint):
    """The paged path on CUDA: small chunks, a KV cache too small for the batch, a prompt seen before."""
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32", device=device)
    solo = {r.request_id: run(engine_for(loaded), [r])[r.request_id] for r in requests_for(loaded, count=6)}
    block = engine_for(loaded).runner.kv.block_bytes
    longest = max(r.num_prompt_tokens + r.params.max_tokens for r in requests_for(loaded, count=6))
    room = -(-longest // 16) + 2  # the longest fits alone, two at once do not
    tight = engine_for(loaded, kv_cache_memory=room * block, max_num_batched_tokens=16)
    assert run(tight, requests_for(loaded, count=6)) == solo
    assert tight.stats().num_preemptions > 0
    cached = engine_for(loaded)
    run(cached, requests_for(loaded, count=1))
    again = run(cached, requests_for(loaded, count=1))
    assert cached.stats().prefix_cache_hit_tokens > 0 and again == {"r0": solo["r0"]}


def test_bfloat16_small_model_generates_on_cuda(device, small_checkpoint):
    loaded = load_pretrained_model(small_checkpoint, dtype="bfloat16", device=device)
    engine = engine_for(loaded)
    out = run(engine, requests_for(loaded, count=3, max_tokens=16))
    assert sorted(out) == ["r0", "r1", "r2"] and all(len(v) == 16 for v in out.values())


@pytest.mark.parametrize(("quantization", "max_ratio"), [("bitsandbytes-8bit", 0.6), ("bitsandbytes-4bit", 0.35)])
def test_quantized_small_model_on_cuda(device, small_checkpoint, quantization, max_ratio):
    reference = load_pretrained_model(small_checkpoint, dtype="bfloat16", device=device)
    loaded = load_pretrained_model(small_checkpoint, dtype="bfloat16", device=device, quantization=quantization)
    assert weight_bytes(loaded.model.model.layers) <= max_ratio * weight_bytes(reference.model.model.layers)
    engine = engine_for(loaded)
    out = run(engine, requests_for(loaded, count=2, max_tokens=8))
    assert all(len(v) == 8 for v in out.values())
