"""The CPU step pacer: budgets sized from observed step times, robust to one slow step."""

from __future__ import annotations

import pytest

from model_runtime.engine.pacing import StepPacer


def pacer(**kwargs) -> StepPacer:
    return StepPacer(**{"step_seconds": 1.5, "token_seconds": 0.005, **kwargs})


def test_before_any_step_the_first_estimate_sizes_the_budget():
    p = pacer()
    assert p.budget(0) == int(1.5 * 4 / 0.005)  # nothing decodes: idle_factor x the step
    assert p.budget(8) == int((1.5 - 8 * 0.005) / 0.005)  # a decode row priced as a budget token


@pytest.mark.parametrize("true_token_s,true_decode_s", [(0.01, 0.35), (0.002, 0.05), (0.02, 0.8)])
def test_steps_converge_to_the_target_on_any_machine(true_token_s, true_decode_s):
    """A machine whose step costs decode + tokens x rate: after some steps the paced step lasts the target."""
    p = pacer()
    for _ in range(5):
        p.observe(8, 0, true_decode_s)  # steps of decode rows alone
    for _ in range(40):
        tokens = p.budget(8)
        p.observe(8, tokens, true_decode_s + tokens * true_token_s)
    seconds = true_decode_s + p.budget(8) * true_token_s
    assert seconds == pytest.approx(1.5, rel=0.05)
    assert p.token_seconds == pytest.approx(true_token_s, rel=0.05)


def test_one_slow_step_moves_the_budget_a_little():
    p = pacer()
    for _ in range(30):
        p.observe(4, p.budget(4), 0.2 + p.budget(4) * 0.01)
    steady = p.budget(4)
    p.observe(4, steady, 30.0)  # a neighbour took the CPU for one step
    assert steady * 0.55 <= p.budget(4) < steady
    for _ in range(15):
        p.observe(4, p.budget(4), 0.2 + p.budget(4) * 0.01)
    assert p.budget(4) == pytest.approx(steady, rel=0.05)


def test_decode_estimate_per_row_count_and_scaled_above_what_was_seen():
    p = pacer()
    p.observe(2, 0, 0.1)
    p.observe(8, 0, 0.3)
    assert p.decode_estimate(2) == 0.1
    assert p.decode_estimate(4) == 0.1 * 4 / 2  # nearest seen below, scaled
    assert p.decode_estimate(8) == 0.3
    assert p.decode_estimate(1) == 0.1  # below every count seen: the smallest
    assert p.decode_estimate(16) == pytest.approx(0.6)


def test_the_budget_stays_within_bounds():
    p = pacer(min_tokens=32, max_tokens=1000)
    p.observe(8, 0, 5.0)  # decode rows alone take longer than the target
    assert p.budget(8) == 32  # prompts still move
    fast = pacer(token_seconds=1e-6, max_tokens=1000)
    assert fast.budget(1) == 1000 and fast.budget(0) == 1000


def test_tiny_prompt_work_says_nothing_about_the_rate():
    p = pacer()
    p.observe(8, 2, 10.0)
    assert p.token_seconds == 0.005


def test_encoder_work_learns_its_own_rate_and_price():
    """Steps mixing prompt and encoder work, the encoder 3x slower per budget token: both rates are
    learnt, the encoder's price follows, and a step of either kind lasts the target."""
    p = pacer()
    p.observe(8, 0, 0.3)
    lm, enc = 0.004, 0.012
    for i in range(80):
        budget = p.budget(8)
        share = (i % 4) / 3  # steps of prompt only, of encoder only, and mixed
        enc_tokens = budget * share / p.encoder_price
        prompt_tokens = budget * (1 - share)
        p.observe(8, prompt_tokens, 0.3 + prompt_tokens * lm + enc_tokens * enc, enc_tokens)
    assert p.token_seconds == pytest.approx(lm, rel=0.1)
    assert p.encoder_seconds == pytest.approx(enc, rel=0.1)
    assert p.encoder_price == pytest.approx(3, rel=0.15)
    budget = p.budget(8)
    assert 0.3 + budget * lm == pytest.approx(1.5, rel=0.1)
    assert 0.3 + budget / p.encoder_price * enc == pytest.approx(1.5, rel=0.15)
