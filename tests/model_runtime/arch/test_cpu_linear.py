"""oneDNN-packed linears for CPU serving: the same results as nn.Linear (to float rounding), a row's
result independent of its batch, only the language model packed, and the engine's batched == solo
property on a packed model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_runtime import Engine, EngineConfig, load_pretrained_model
from model_runtime.arch.cpu_linear import FusedPart, PackedLinear, native_bf16, pack_linears
from tests.model_runtime.engine import conftest as engine_conftest
from tests.model_runtime.engine.conftest import run
from tests.model_runtime.engine.test_engine import staggered_requests

make_request = engine_conftest.make_request  # the engine tests' request fixture, here too


@pytest.fixture(scope="module")
def packed_model(tiny_checkpoint):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    plain = load_pretrained_model(tiny_checkpoint, dtype="float32")
    count = pack_linears(loaded.model)
    return loaded, plain, count


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_linear_and_rows_do_not_depend_on_the_batch(bias):
    torch.manual_seed(0)
    linear = nn.Linear(896, 1216, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(70, 896)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(packed(x[None])[0], linear(x), rtol=1e-5, atol=1e-4)  # [B, T, D] input
        alone = [packed(x[i : i + 1]) for i in (0, 5, 69)]
        for rows in (2, 9, 33, 70):
            batch = packed(x[:rows])
            assert torch.equal(batch[:1], alone[0]), rows  # the same bits whatever the batch
            if rows > 5:
                assert torch.equal(batch[5:6], alone[1]), rows
        assert torch.equal(packed(x)[69:70], alone[2])


def test_fused_projections_give_the_bits_of_separate_ones(tiny_checkpoint):
    """q/k/v and gate/up as one packed matmul each: the same logits, bit for bit, as packing each linear
    alone (each output column is the same dot product); nothing is held between forwards."""
    fused = load_pretrained_model(tiny_checkpoint, dtype="float32").model
    separate = load_pretrained_model(tiny_checkpoint, dtype="float32").model
    assert pack_linears(fused, fuse=True) == pack_linears(separate)
    attn, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert all(isinstance(getattr(attn, n), FusedPart) for n in ("q_proj", "k_proj", "v_proj"))
    assert attn.q_proj.fused is attn.v_proj.fused and isinstance(attn.o_proj, PackedLinear)
    assert mlp.gate_proj.fused is mlp.up_proj.fused and isinstance(mlp.down_proj, PackedLinear)
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (separate.model.layers[0].self_attn.q_proj.out_features,
                                                                    separate.model.layers[0].self_attn.k_proj.out_features)
    for ids in (torch.tensor([[1, 5, 9, 23, 7]]), torch.tensor([[4]])):
        with torch.inference_mode():
            assert torch.equal(fused(input_ids=ids).logits, separate(input_ids=ids).logits)
    assert attn.q_proj.fused._output is None and mlp.up_proj.fused._input is None


def test_only_the_language_models_linears_are_packed(packed_model):
    loaded, plain, count = packed_model
    model = loaded.model
    layers = model.model.layers
    per_layer = sum(isinstance(m, nn.Linear) for m in plain.model.model.layers[0].modules())
    assert per_layer == 7  # q, k, v, o, gate, up, down
    assert count == len(layers) * per_layer + 1  # and the output head
    assert not any(type(m) is nn.Linear for m in layers.modules())
    assert isinstance(model.lm_head, PackedLinear)
    assert any(type(m) is nn.Linear for m in model.model.vision_tower.modules())  # towers stay plain
    assert any(type(m) is nn.Linear for m in model.model.mm_projector.modules())
    ids = torch.tensor([[1, 5, 9, 23, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, plain.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_a_packed_model_serves_batched_equal_to_solo(packed_model, make_request):
    loaded, _, _ = packed_model
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                    EngineConfig(max_num_seqs=6, max_num_batched_tokens=48, kv_cache_memory=16 * 2**20))
    requests = staggered_requests(make_request)[:8]
    batched = run(engine, requests, arrival_steps=[i // 2 * 3 for i in range(8)])
    for request in staggered_requests(make_request)[:8]:
        solo = run(engine, [request])[request.request_id]
        assert solo.ids == batched[request.request_id].ids, request.request_id


def test_bfloat16_is_packed_only_where_the_cpu_multiplies_it_natively(tiny_checkpoint, make_request):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="bfloat16")
    count = pack_linears(loaded.model)
    if not native_bf16():
        assert count == 0 and type(loaded.model.lm_head) is nn.Linear
        return
    assert count == len(loaded.model.model.layers) * 7 + 1 and isinstance(loaded.model.lm_head, PackedLinear)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                    EngineConfig(max_num_seqs=6, max_num_batched_tokens=48, kv_cache_memory=16 * 2**20))
    requests = staggered_requests(make_request)[:6]
    batched = run(engine, requests, arrival_steps=[i // 2 * 3 for i in range(6)])
    for request in staggered_requests(make_request)[:6]:  # a row's bfloat16 bits do not depend on the batch
        assert run(engine, [request])[request.request_id].ids == batched[request.request_id].ids
