"""The engine on the tiny model: batched greedy output equals solo output; stops; sampling seeds."""

from __future__ import annotations

from model_runtime import ChatTurn, Engine, Request, SamplingParams
from tests.conftest import random_image


def run(engine: Engine, requests: list[Request]) -> dict[str, list[int]]:
    for r in requests:
        engine.add_request(r)
    out: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    while engine.has_unfinished():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                finish[o.request_id] = o.finish_reason
    assert set(finish) == {r.request_id for r in requests}
    return out


def make_requests(tiny_model, **params):
    p = tiny_model.processor
    specs = [
        ("img-wide", "<image>\nWhat is in the picture?", [random_image(120, 40, seed=1)], 9),
        ("text", "Tell me a story about a cat.", [], 5),
        ("img-tall", "<image>\nDescribe.", [random_image(30, 90, seed=2)], 12),
    ]
    requests = []
    for rid, text, images, max_tokens in specs:
        media = [p.process_image(im, single_crop=False) for im in images]
        prompt = p.build_prompt([ChatTurn("user", text)], media)
        requests.append(Request(rid, prompt, media, SamplingParams(max_tokens=max_tokens, **params)))
    return requests


def test_batched_greedy_equals_solo(tiny_model):
    engine = Engine(tiny_model.model, tiny_model.tokenizer, tiny_model.eos_token_ids)
    batched = run(engine, make_requests(tiny_model, temperature=0, ignore_eos=True))
    for request in make_requests(tiny_model, temperature=0, ignore_eos=True):
        solo = run(engine, [request])
        assert solo[request.request_id] == batched[request.request_id]
    assert [len(batched[k]) for k in ("img-wide", "text", "img-tall")] == [9, 5, 12]
    assert engine.stats().num_running == 0


def test_seeded_sampling_is_reproducible(tiny_model):
    engine = Engine(tiny_model.model, tiny_model.tokenizer, tiny_model.eos_token_ids)
    a = run(engine, make_requests(tiny_model, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True))
    b = run(engine, make_requests(tiny_model, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True))
    assert a == b


def test_stop_on_eos(tiny_model):
    engine = Engine(tiny_model.model, tiny_model.tokenizer, tiny_model.eos_token_ids)
    greedy = run(engine, make_requests(tiny_model, temperature=0, ignore_eos=True))["text"]
    # make the first greedy token a stop token: generation must end right after it
    requests = [r for r in make_requests(tiny_model, temperature=0, stop_token_ids=(greedy[0],)) if r.request_id == "text"]
    out = run(engine, requests)
    assert out["text"] == [greedy[0]]
