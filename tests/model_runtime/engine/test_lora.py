"""Several LoRA adapters in one engine: each request's tokens equal its adapter merged and served
alone, base rows keep the base model's tokens, caches are keyed by the adapter's content."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn

from model_runtime import (
    ChatTurn,
    ConfigError,
    Engine,
    EngineConfig,
    Request,
    SamplingParams,
    load_pretrained_model,
)
from model_runtime.arch.lora_layers import LoraLinear, LoraStep, LoraWeights
from model_runtime.checkpoint.lora import read_adapter
from model_runtime.engine.request import UnknownAdapterError
from tests.conftest import random_image
from tests.model_runtime.engine.conftest import run

TARGETS = {"qv_up": r"model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.up_proj)",
           "all": r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"}


def make_adapter(checkpoint: str, folder: Path, targets: str, seed: int) -> Path:
    """A PEFT adapter with random weights on the tiny model, in ORIG's LoRA layout (config.json beside it)."""
    loaded = load_pretrained_model(checkpoint, dtype="float32")
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, target_modules=targets)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(loaded.model, config).save_pretrained(folder)
    shutil.copyfile(Path(checkpoint) / "config.json", folder / "config.json")
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {name: make_adapter(tiny_checkpoint, root / name, targets, seed)
            for seed, (name, targets) in enumerate(TARGETS.items(), start=5)}


def requests(loaded, keys: dict[str, str | None], image=None) -> list[Request]:
    out = []
    for rid, key in keys.items():
        media = [loaded.processor.process_image(image, single_crop=False)] if image is not None and rid.endswith("-b") else []
        text = ("<image>\n" if media else "") + f"Say something about {rid}."
        prompt = loaded.processor.build_prompt([ChatTurn("user", text)], media)
        out.append(Request(rid, prompt, media, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True,
                                                              logprobs=True), lora=key))
    return out


def engine_of(model, loaded) -> Engine:
    return Engine(model, loaded.tokenizer, loaded.eos_token_ids, EngineConfig(kv_cache_memory=16 * 2**20))


def test_grouped_deltas_equal_per_row_math():
    torch.manual_seed(0)
    base, step = nn.Linear(16, 12), LoraStep()
    lora = LoraLinear(base, step)
    pairs = {slot: LoraWeights(torch.randn(4, 16), torch.randn(12, 4), 0.5 + slot) for slot in (0, 1)}
    lora.adapters.update(pairs)
    x = torch.randn(1, 7, 16)
    rows = {0: [0, 3], 1: [1, 4, 5]}
    step.groups = [(slot, torch.tensor(r)) for slot, r in rows.items()] + [(9, torch.tensor([2]))]  # 9: not here
    with torch.inference_mode():
        out, plain = lora(x)[0], base(x)[0]
        for slot, ids in rows.items():
            for i in ids:
                want = plain[i] + pairs[slot].scaling * (pairs[slot].b @ (pairs[slot].a @ x[0, i]))
                torch.testing.assert_close(out[i], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(out[[2, 6]], plain[[2, 6]])  # base rows: the base linear's own bits
        step.groups = []
        assert torch.equal(lora(x), base(x))


def test_each_request_runs_under_its_adapter_as_the_adapter_merged_alone(tiny_checkpoint, adapters):
    """Base, two adapters and images in one engine, all at once: each request's tokens equal those of its
    adapter merged into the weights and served alone (float32); base rows equal a plain engine's, bit for bit."""
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    engine = engine_of(loaded.model, loaded)
    read = {name: read_adapter(folder) for name, folder in adapters.items()}
    for adapter in read.values():
        engine.load_lora(adapter)
    keys = {"base-a": None, "qv-a": read["qv_up"].key, "all-a": read["all"].key, "base-b": None,
            "qv-b": read["qv_up"].key, "all-b": read["all"].key}
    image = random_image(70, 40, seed=2)
    arrivals = [0, 0, 1, 1, 2, 3]
    together = run(engine, requests(loaded, keys, image), arrival_steps=arrivals)
    # every prompt on the base model, in the same steps (the CPU's plain matmul rounds by batch size)
    plain = run(engine_of(load_pretrained_model(tiny_checkpoint, dtype="float32").model, loaded),
                requests(loaded, dict.fromkeys(keys), image), arrival_steps=arrivals)
    for rid in ("base-a", "base-b"):
        assert together[rid].ids == plain[rid].ids
        assert [lp.chosen.logprob for lp in together[rid].logprobs[0]] == [
            lp.chosen.logprob for lp in plain[rid].logprobs[0]]  # the same bits
    assert any(together[rid].ids != plain[rid].ids for rid in keys if keys[rid])  # the adapters change tokens
    for name, prefix in (("qv_up", "qv"), ("all", "all")):
        merged = load_pretrained_model(adapters[name], model_base=tiny_checkpoint, dtype="float32")
        alone = run(engine_of(merged.model, loaded), requests(loaded, {f"{prefix}-a": None, f"{prefix}-b": None}, image))
        for rid in (f"{prefix}-a", f"{prefix}-b"):
            assert together[rid].ids == alone[rid].ids, rid


def test_the_prefix_cache_never_shares_blocks_between_adapters(tiny_checkpoint, adapters):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    engine = engine_of(loaded.model, loaded)
    adapter = read_adapter(adapters["all"])
    engine.load_lora(adapter)
    long_text = {"first": None}

    def once(rid: str, key: str | None) -> int:
        request = requests(loaded, {rid: key})[0]
        prompt = loaded.processor.build_prompt([ChatTurn("user", "a long shared question " * 8)], [])
        request = Request(rid, prompt, [], request.params, lora=key)
        return run(engine, [request])[rid].final.metrics.num_cached_tokens

    assert long_text and once("base-1", None) == 0
    assert once("base-2", None) > 0  # the same prompt again: its blocks come from the cache
    assert once("lora-1", adapter.key) == 0  # under the adapter the KV differs: no block shared
    assert once("lora-2", adapter.key) > 0
    # the same weights read again are the same adapter (content key), whatever the folder is called
    assert read_adapter(adapters["all"]).key == adapter.key != read_adapter(adapters["qv_up"]).key


def test_unloading_fails_its_requests_and_unknown_adapters_are_refused(tiny_checkpoint, adapters):
    loaded = load_pretrained_model(tiny_checkpoint, dtype="float32")
    engine = engine_of(loaded.model, loaded)
    adapter = read_adapter(adapters["qv_up"])
    engine.load_lora(adapter)
    for request in requests(loaded, {"under": adapter.key, "base": None}):
        engine.add_request(request)
    engine.step()
    outputs = engine.unload_lora(adapter.key)
    assert [(o.request_id, o.finish_reason) for o in outputs] == [("under", "error")]
    assert run(engine, [])["base"].final.finish_reason == "length"
    with pytest.raises(UnknownAdapterError):
        engine.add_request(requests(loaded, {"again": adapter.key})[0])


def test_adapters_that_cannot_be_served_are_refused_by_name(adapters, tmp_path):
    folder = adapters["qv_up"]
    extra = tmp_path / "head"
    shutil.copytree(folder, extra)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.lm_head.lora_B.weight": torch.zeros(8, 4)}, extra / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match="lm_head"):
        read_adapter(extra)
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ConfigError, match="convert-bin"):
        read_adapter(pickled)
    dora = tmp_path / "dora"
    shutil.copytree(folder, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match="DoRA"):
        read_adapter(dora)
    with pytest.raises(ConfigError, match="max-lora-rank"):
        read_adapter(folder, max_rank=2)
