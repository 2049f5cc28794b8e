"""The paged engine on the tiny model: preemption, the prefix cache, shared prompt blocks, media
encoded over several steps, and what the KV cache holds."""

from __future__ import annotations

import copy

import pytest

from model_runtime import ChatTurn, Request, SamplingParams
from model_runtime.config.engine import IDLE_STEP_FACTOR
from model_runtime.engine.kv import bytes_per_block
from tests.conftest import random_image
from tests.model_runtime.engine.conftest import collect, images, run


def block_bytes(engine) -> int:
    model = engine.runner.model
    return bytes_per_block(model.config, engine.block_size, model.model.embed_tokens.weight.dtype)


def mixed_requests(make_request, count: int = 10):
    return [make_request(f"r{i}", "word " * (3 + 2 * i) + "end", images((30 + 7 * i, 40), seed=i) if i % 3 == 0 else (),
                         max_tokens=12 + i % 4) for i in range(count)]


def test_preempted_sequences_are_recomputed_and_their_streams_do_not_notice(new_engine, make_request):
    roomy = new_engine()
    solo = {r.request_id: run(roomy, [r])[r.request_id] for r in mixed_requests(make_request)}
    # 30 blocks of 16 positions: fewer than the ten requests need together
    engine = new_engine(kv_cache_memory=31 * block_bytes(roomy), enable_prefix_caching=False)
    results = run(engine, mixed_requests(make_request))
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.num_errors == 0
    for rid, result in results.items():
        assert result.ids == solo[rid].ids, rid
        assert result.text == solo[rid].text  # the streamed deltas, joined
        assert result.final.finish_reason == "length"
    assert stats.kv_blocks_used == 0


def conversation(make_request_params, processor, picture):
    """Turn 1 asks about an image; turn 2 resends it with turn 1's answer and a new question."""

    def build(rid, turns, **params):
        media = [processor.process_image(picture[0], single_crop=False)]
        prompt = processor.build_prompt(turns, media)
        return Request(rid, prompt, media, SamplingParams(**{"max_tokens": 6, "temperature": 0,
                                                              "ignore_eos": True, **params}))

    return build


def test_a_second_turn_prefills_only_its_new_tokens_with_the_ids_of_a_miss(new_engine, tiny_model):
    processor = tiny_model.processor
    picture = images((90, 60), seed=4)
    build = conversation(None, processor, picture)
    turn1 = [ChatTurn("user", "<image>\\nWhat is in the picture?")]

    def turns2(answer):
        return turn1 + [ChatTurn("assistant", answer), ChatTurn("user", "And what colour is it?")]

    cached = new_engine()
    first = run(cached, [build("t1", turn1)])["t1"]
    answer = tiny_model.tokenizer.decode(first.ids)
    before = cached.stats()
    second = run(cached, [build("t2", turns2(answer))])["t2"]
    after = cached.stats()
    t1, t2 = build("t1", turn1), build("t2", turns2(answer))
    hit = second.final.metrics.num_cached_tokens
    assert first.final.metrics.num_cached_tokens == 0
    assert hit >= t1.num_prompt_tokens - cached.block_size and hit % cached.block_size == 0
    assert after.num_prefill_tokens - before.num_prefill_tokens == t2.num_prompt_tokens - hit
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == hit
    assert second.final.metrics.media_cache_hits == (True,)  # the image's rows came from the prefix cache
    assert after.encoder_cache_queries == before.encoder_cache_queries  # so it was not even looked up
    uncached = new_engine(enable_prefix_caching=False)
    assert run(uncached, [build("t2", turns2(answer))])["t2"].ids == second.ids
    sampled = {"temperature": 0.8, "seed": 3}
    assert run(cached, [build("s", turns2(answer), **sampled)])["s"].ids == run(
        uncached, [build("s", turns2(answer), **sampled)])["s"].ids
    assert cached.reset_prefix_cache() > 0
    again = run(cached, [build("t3", turns2(answer))])["t3"]
    assert again.final.metrics.num_cached_tokens == 0 and again.ids == second.ids


def test_choices_share_the_prompt_blocks_and_free_them(new_engine, make_request):
    engine = new_engine()
    request = make_request("n4", "Tell me more " * 5, images((50, 50)), temperature=0.7, seed=2, n=4, max_tokens=5)
    engine.add_request(request)
    results = {}
    shared = 0
    while engine.has_unfinished():
        collect(engine.step(), results)
        seqs = engine.choices.get("n4", [])
        if len(seqs) == 4 and all(not s.status.is_finished for s in seqs):
            full = request.num_prompt_tokens // engine.block_size
            first_blocks = seqs[0].block_ids[:full]
            assert all(s.block_ids[:full] == first_blocks for s in seqs)
            shared = max(shared, min(engine.pool.ref_count(b) for b in first_blocks))
            assert len({s.block_ids[full] for s in seqs}) == 4  # the partial last block is each one's own
    assert shared == 4
    assert engine.stats().num_prefill_tokens == request.num_prompt_tokens
    assert engine.stats().kv_blocks_used == 0
    assert len({tuple(results["n4"].token_ids[i]) for i in range(4)}) > 1


def test_a_long_video_is_encoded_over_steps_while_text_keeps_decoding(new_engine, make_request, tiny_model):
    processor = tiny_model.processor
    frames = [random_image(50, 40, seed=i) for i in range(16)]

    def video_request():
        media = [processor.process_video(frames, [float(i) for i in range(16)], duration=16.0)]
        prompt = processor.build_prompt([ChatTurn("user", "<video>\nWhat happens?")], media)
        return Request("video", prompt, media, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))

    engine = new_engine(max_num_batched_tokens=16, enable_prefix_caching=False)
    engine.add_request(make_request("text", "Hello there.", max_tokens=40))
    for _ in range(3):
        engine.step()
    engine.add_request(video_request())
    progress, text_tokens = [], []
    while not engine.requests["video"].encoded:
        results = {}
        collect(engine.step(), results)
        text_tokens.append(len(results["text"].ids))
        progress += [j.num_done for j in engine.media.jobs.values()]
    assert len(progress) >= 2 and progress == sorted(set(progress))  # the encoding advanced step by step
    assert all(n == 1 for n in text_tokens)  # and the text request got a token at every one of those steps
    rest = run(engine, [])
    assert rest["video"].final.finish_reason == "length"
    assert rest["video"].ids == run(new_engine(), [video_request()])["video"].ids


def test_the_cache_holds_about_the_tokens_it_has(new_engine, make_request):
    engine = new_engine()
    for r in mixed_requests(make_request, count=6):
        engine.add_request(r)
    for _ in range(6):
        engine.step()
    stats = engine.stats()
    assert stats.batch_size == 6 and stats.num_kv_tokens > 0
    # no padding: the blocks in use hold the tokens, with less than one block of slack per sequence
    assert stats.num_kv_tokens <= stats.num_kv_slots < stats.num_kv_tokens + 6 * stats.block_size
    assert stats.kv_cache_bytes == stats.kv_blocks_used * block_bytes(engine)
    assert 0 < stats.kv_cache_usage < 1
    run(engine, [])


class TickingClock:
    """Each reading is `tick` seconds after the one before, so every engine step lasts exactly `tick`."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_cpu_step_budget_is_paced_by_the_engines_own_steps(new_engine, make_request):
    """No max_num_batched_tokens on the CPU: the first budget comes from a timed matmul, later ones
    from the steps run (pacing.py), here timed by a fake clock; a given budget stays fixed."""
    engine = new_engine(step_seconds=0.5, clock=TickingClock(0.25))
    assert engine.pacer is not None and engine.pacer.step_seconds == 0.5
    assert engine.scheduler.step_tokens == engine.pacer.budget(1)
    plans = []
    schedule = engine.scheduler.schedule
    engine.scheduler.schedule = lambda: plans.append(schedule()) or plans[-1]  # records each real plan
    for request in (make_request("a", max_tokens=6), make_request("b", max_tokens=6)):
        engine.add_request(request)
    while engine.has_unfinished():
        expected = copy.deepcopy(engine.pacer)
        engine.step()
        plan = plans[-1]
        decoding = plan.num_decode_tokens
        # the step was sized from what the pacer knew before it ...
        assert engine.scheduler.step_tokens == (expected.budget(decoding) if decoding
                                                else expected.budget(0) // IDLE_STEP_FACTOR)
        # ... and taught it exactly what a 0.25 s step with this work teaches
        if plan.chunks or plan.encoder_work:
            expected.observe(decoding, plan.prompt_cost, 0.25, plan.encoder_cost)
        assert engine.pacer == expected
    assert set(engine.pacer.decode_seconds) <= {1, 2} and engine.pacer.decode_seconds  # decode-only steps seen
    assert all(s == pytest.approx(0.25) for s in engine.pacer.decode_seconds.values())
    assert engine.stats().step_seconds == pytest.approx(0.25 * engine.stats().num_steps)
    fixed = new_engine(max_num_batched_tokens=48)
    assert fixed.pacer is None
    run(fixed, [make_request("c", max_tokens=4)])
    assert fixed.scheduler.step_tokens == 48
