"""Sampling: filters, penalties, logprobs, and seeds that do not depend on the rest of the batch."""

from __future__ import annotations

import math

import pytest
import torch

from model_runtime import SamplingParams, SamplingParamsError
from model_runtime.engine.sampler import SamplingRow, choice_generator, sample
from tests.model_runtime.engine.conftest import images, run

LOGITS = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0]])


def row(seed: int | None = 0, output_ids=(), prompt_ids=(), **params) -> SamplingRow:
    params.setdefault("max_tokens", 1)
    p = SamplingParams(**params)
    gen = None if p.is_greedy else choice_generator(seed, 0, torch.device("cpu"), torch.Generator())
    return SamplingRow(p, gen, prompt_ids, list(output_ids))


def draws(num: int, **params) -> list[int]:
    r = row(seed=1, **params)
    return [sample(LOGITS, [r]).token_ids[0] for _ in range(num)]


def test_greedy_and_degenerate_filters_pick_the_argmax():
    assert sample(LOGITS, [row(temperature=0)]).token_ids == [0]
    assert set(draws(50, temperature=1.5, top_k=1)) == {0}
    assert set(draws(50, temperature=1.5, min_p=1.0)) == {0}
    assert set(draws(50, temperature=1.5, top_p=0.01)) == {0}


def test_a_top_k_past_the_vocabulary_keeps_every_token():
    # 2**64 once overflowed the int64 tensor of top_k and crashed the engine thread (found by bench/stress)
    assert set(draws(300, temperature=2.0, top_k=2**64)) == set(range(LOGITS.shape[1]))
    assert set(draws(300, temperature=2.0, top_k=10**30)) == set(range(LOGITS.shape[1]))


def test_filters_keep_exactly_their_sets():
    assert set(draws(300, temperature=2.0, top_k=3)) == {0, 1, 2}
    probs = torch.softmax(LOGITS[0], dim=-1)
    # top_p: the smallest prefix whose mass reaches p
    mass2 = float(probs[:2].sum())
    assert set(draws(300, temperature=1.0, top_p=mass2 - 1e-3)) == {0, 1}
    # min_p: tokens with p >= min_p * p_max
    ratio = float(probs[2] / probs[0])
    assert set(draws(300, temperature=1.0, min_p=ratio - 1e-3)) == {0, 1, 2}


def test_sampling_frequencies_follow_the_tempered_distribution():
    counts = torch.bincount(torch.tensor(draws(3000, temperature=0.7)), minlength=6).float()
    expected = torch.softmax(LOGITS[0] / 0.7, dim=-1) * 3000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 25  # 5 degrees of freedom: p < 1e-4 for a correct sampler


def test_penalties():
    # presence and frequency act on generated tokens; repetition on prompt and generated tokens
    assert sample(LOGITS, [row(temperature=0, output_ids=[0], presence_penalty=0.6)]).token_ids == [1]
    assert sample(LOGITS, [row(temperature=0, output_ids=[0], presence_penalty=0.4)]).token_ids == [0]
    assert sample(LOGITS, [row(temperature=0, output_ids=[0, 0], frequency_penalty=0.3)]).token_ids == [1]
    assert sample(LOGITS, [row(temperature=0, output_ids=[0], frequency_penalty=0.3)]).token_ids == [0]
    assert sample(LOGITS, [row(temperature=0, prompt_ids=[0], repetition_penalty=1.5)]).token_ids == [1]
    assert sample(LOGITS, [row(temperature=0, prompt_ids=[0], repetition_penalty=1.2)]).token_ids == [0]
    negative = torch.tensor([[-1.0, -1.1, -3.0]])
    assert sample(negative, [row(temperature=0, output_ids=[0], repetition_penalty=1.2)]).token_ids == [1]
    # rows are penalised independently
    both = sample(LOGITS.repeat(2, 1), [row(temperature=0, output_ids=[0], presence_penalty=1.0),
                                        row(temperature=0)])
    assert both.token_ids == [1, 0]


def test_logprobs_are_the_raw_distribution():
    out = sample(LOGITS, [row(temperature=1.0, logprobs=True, top_logprobs=3, presence_penalty=2.0, output_ids=[0])])
    chosen, top = out.logprobs[0]
    expected = torch.log_softmax(LOGITS[0], dim=-1)
    assert chosen == pytest.approx(float(expected[out.token_ids[0]]))
    assert [t for t, _ in top] == [0, 1, 2]
    assert [lp for _, lp in top] == pytest.approx(expected[:3].tolist())
    assert math.fsum(math.exp(v) for v in expected.tolist()) == pytest.approx(1.0)
    assert sample(LOGITS, [row(temperature=0)]).logprobs == [None]


def test_a_seeded_row_ignores_its_neighbours():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    alone = sample(logits[:1], [row(seed=9, temperature=1.0)]).token_ids[0]
    rows = [row(seed=9, temperature=1.0), row(seed=None, temperature=1.3, top_k=5), row(temperature=0),
            row(seed=2, temperature=0.5, top_p=0.5, presence_penalty=1.0, output_ids=[3])]
    assert sample(logits, rows).token_ids[0] == alone


def test_parameters_are_validated_with_the_field_name():
    for bad, param in [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"),
                       ({"min_p": 1.5}, "min_p"), ({"presence_penalty": 3}, "presence_penalty"),
                       ({"frequency_penalty": -2.5}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
                       ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
                       ({"n": 0}, "n"), ({"stop": ("",)}, "stop"), ({"max_tokens": 0}, "max_tokens"),
                       # tuples only, so the params stay immutable (and a bare string is not split into characters)
                       ({"stop": "x"}, "stop"), ({"stop": ["a"]}, "stop"), ({"stop_token_ids": [3]}, "stop_token_ids"),
                       ({"logit_bias": {3: 1.0}}, "logit_bias")]:
        bad.setdefault("max_tokens", 4)
        with pytest.raises(SamplingParamsError) as info:
            SamplingParams(**bad)
        assert info.value.param == param
    assert SamplingParams(max_tokens=1, stop=("a", "b"), stop_token_ids=(3,), logit_bias=((3, 1.0),)).stop == ("a", "b")


def test_seeded_requests_give_the_same_text_in_any_batch(new_engine, make_request):
    def target():
        return make_request("t", "Once upon a time", images((50, 30)), temperature=1.0, top_p=0.9, seed=7,
                            max_tokens=10)

    alone = run(new_engine(), [target()])["t"].ids
    crowd = [target(),
             make_request("a", "Other prompt here", temperature=1.2, seed=1, max_tokens=12),
             make_request("b", "Unseeded one", temperature=0.8, max_tokens=4),
             make_request("c", "Greedy one", images((30, 60)), max_tokens=9),
             make_request("d", "Late joiner with penalties", temperature=1.0, seed=3, frequency_penalty=1.0,
                          max_tokens=6)]
    crowded = run(new_engine(), crowd, arrival_steps=[2, 0, 0, 1, 4])["t"].ids
    assert crowded == alone
    other_seed = make_request("t8", "Once upon a time", images((50, 30)), temperature=1.0, top_p=0.9, seed=8,
                              max_tokens=10)
    assert run(new_engine(), [other_seed])["t8"].ids != alone


def test_logprobs_through_the_engine(new_engine, make_request):
    result = run(new_engine(), [make_request("lp", max_tokens=6, logprobs=True, top_logprobs=5)])["lp"]
    entries = result.logprobs[0]
    assert [e.chosen.token_id for e in entries] == result.ids
    for e in entries:
        assert [t.logprob for t in e.top] == sorted((t.logprob for t in e.top), reverse=True)
        assert len(e.top) == 5 and e.top[0].token_id == e.chosen.token_id  # greedy takes the top token
        assert e.chosen.logprob == e.top[0].logprob < 0
    # the tokens' raw bytes concatenate to the generated text
    assert bytes(b for e in entries for b in e.chosen.bytes).decode("utf-8", errors="replace") == result.text
    assert run(new_engine(), [make_request("g", max_tokens=6)])["g"].ids == result.ids
