"""The engine on the tiny model: continuous batching equals solo generation; n; abort; stops; stats."""

from __future__ import annotations

import dataclasses

import torch

from model_runtime import ChatTurn, Engine, Request, SamplingParams
from model_runtime.engine.request import Priority
from tests.conftest import random_image, random_waveform
from tests.model_runtime.engine.conftest import collect, images, run


def staggered_requests(make_request):
    """16 requests: text and images (one or two, anyres or single crop), prompts of 1-9 words, 2-14 tokens."""
    requests = []
    for i in range(16):
        text = " ".join(["word"] * (1 + i % 9)) + f" question {i}?"
        if i % 4 == 0:
            media = images((30 + 9 * i, 40 + 5 * i), seed=i)
        elif i % 4 == 1:
            media = images((50, 20 + 3 * i), (25, 60), seed=i)
        else:
            media = []
        requests.append(make_request(f"r{i}", text, media, single_crop=len(media) > 1, max_tokens=2 + (5 * i) % 13))
    return requests


def test_sixteen_staggered_requests_equal_their_solo_runs(new_engine, make_request):
    engine = new_engine(max_num_seqs=6, max_num_batched_tokens=48)
    requests = staggered_requests(make_request)
    arrivals = [i // 2 * 3 for i in range(16)]  # two new requests every three steps
    joined_mid_decode = 0
    max_batch = 0
    results = {}
    pending = sorted(zip(arrivals, range(16), requests, strict=True))
    step = 0
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            engine.add_request(pending.pop(0)[2])
        before = engine.stats()
        collect(engine.step(), results)
        after = engine.stats()
        joined_mid_decode += after.num_prefill_steps > before.num_prefill_steps and before.batch_size > 0
        max_batch = max(max_batch, after.batch_size)
        step += 1
    assert joined_mid_decode >= 3 and max_batch == 6  # rows really joined a running batch, up to the cap
    assert engine.stats().kv_cache_bytes == 0
    for request in staggered_requests(make_request):
        solo = run(engine, [request])[request.request_id]
        assert solo.ids == results[request.request_id].ids, request.request_id
        assert len(solo.ids) == request.params.max_tokens
        assert results[request.request_id].final.finish_reason == "length"


def test_solo_generation_equals_recomputing_without_a_cache(tiny_model, new_engine, make_request):
    model = tiny_model.model
    for request in (make_request("img", "What is here?", images((70, 40)), max_tokens=5),
                    make_request("txt", "Tell me a story.", max_tokens=5)):
        got = run(new_engine(), [request])[request.request_id].ids
        with torch.inference_mode():
            items = model.encode_media(request.media)
            embeds, _, _ = model.prepare_inputs_for_multimodal([request.prompt.token_ids], [items])
            expected = []
            for _ in range(5):
                logits = model(inputs_embeds=embeds).logits[0, -1]
                expected.append(int(logits.argmax()))
                next_embed = model.get_input_embeddings()(torch.tensor([[expected[-1]]]))
                embeds = torch.cat([embeds, next_embed], dim=1)
        assert got == expected


def test_n_choices_share_one_prefill(new_engine, make_request):
    engine = new_engine()
    request = make_request("n3", "Hello there.", images((40, 40)), temperature=0.9, seed=11, n=3, max_tokens=8)
    result = run(engine, [request])["n3"]
    assert sorted(result.finals) == [0, 1, 2]
    assert all(len(result.token_ids[i]) == 8 for i in range(3))
    assert len({tuple(result.token_ids[i]) for i in range(3)}) == 3  # three different samples
    assert engine.stats().num_prefill_tokens == request.num_prompt_tokens  # the prompt ran once
    single = run(engine, [make_request("n1", "Hello there.", images((40, 40)), temperature=0.9, seed=11,
                                       max_tokens=8)])["n1"]
    assert single.ids == result.token_ids[0]  # choice 0 of a seed equals the same seed with n=1
    greedy = run(engine, [make_request("g3", "Hello there.", n=3, max_tokens=4)])["g3"]
    assert greedy.token_ids[0] == greedy.token_ids[1] == greedy.token_ids[2]


def test_abort_frees_the_row_and_the_cache(new_engine, make_request):
    def short():
        return make_request("short", "Hi.", max_tokens=12)

    engine = new_engine()
    engine.add_request(short())
    engine.add_request(make_request("long", "A much longer prompt " * 6, images((90, 90)), max_tokens=50))
    for _ in range(4):
        engine.step()
    assert engine.stats().batch_size == 2
    outputs = engine.abort_request("long")
    assert [(o.finished, o.finish_reason) for o in outputs] == [(True, "abort")]
    assert engine.abort_request("long") == []
    stats = engine.stats()
    assert stats.batch_size == 1 and stats.num_running == 1
    # the short row alone, at the same point, holds exactly the same cache
    alone = new_engine()
    alone.add_request(short())
    for _ in range(4):
        alone.step()
    assert alone.stats().kv_cache_bytes == stats.kv_cache_bytes
    assert alone.stats().num_kv_slots == stats.num_kv_slots == stats.num_kv_tokens
    rest = run(engine, [])
    assert "long" not in rest
    engine.abort_request("short")
    assert engine.stats().kv_cache_bytes == 0 and not engine.has_unfinished()


def test_abort_of_a_waiting_request_and_deadlines(new_engine, make_request):
    engine = new_engine(max_num_seqs=1)
    engine.add_request(make_request("first", max_tokens=3))
    expired = dataclasses.replace(make_request("late", max_tokens=3), deadline=0.0)
    engine.add_request(expired)
    engine.add_request(make_request("queued", max_tokens=3))
    out = engine.abort_request("queued")
    assert [(o.request_id, o.finish_reason, o.metrics.scheduled_time) for o in out] == [("queued", "abort", None)]
    results = run(engine, [])
    assert results["late"].final.finish_reason == "abort"
    assert results["first"].final.finish_reason == "length"


def test_eos_and_stop_token_ids_end_generation(new_engine, make_request, tiny_model):
    engine = new_engine()
    greedy = run(engine, [make_request("g", max_tokens=6)])["g"].ids
    stopped = run(engine, [make_request("s", max_tokens=6, stop_token_ids=(greedy[2],))])["s"]
    assert stopped.ids == greedy[:3] and stopped.final.finish_reason == "stop"
    assert stopped.final.stop_reason == greedy[2]
    eos_engine = type(engine)(tiny_model.model, tiny_model.tokenizer, (greedy[1],), engine.config)
    assert run(eos_engine, [make_request("e", max_tokens=6, ignore_eos=False)])["e"].ids == greedy[:2]
    assert run(eos_engine, [make_request("i", max_tokens=6, ignore_eos=True)])["i"].ids == greedy


def test_stats_and_request_metrics(new_engine, make_request):
    engine = new_engine()
    result = run(engine, [make_request("m", "Look.", images((40, 40)), max_tokens=4)])["m"]
    metrics = result.final.metrics
    assert metrics.media_cache_hits == (False,)
    assert set(metrics.encoder_seconds) == {"image"}
    assert metrics.arrival_time <= metrics.scheduled_time <= metrics.first_token_time <= metrics.finished_time
    assert metrics.queue_time >= 0 and metrics.prefill_time > 0 and metrics.decode_time > 0
    stats = engine.stats()
    assert stats.num_generation_tokens == 4 and stats.num_prefill_steps == 1 and stats.num_decode_steps == 3
    assert stats.forward_seconds + stats.encoder_seconds <= stats.step_seconds
    assert stats.last_step_time > 0 and not stats.is_dead


def test_mixed_modalities_batched_equal_solo(tiny_audio_model):
    p = tiny_audio_model.processor
    video = p.process_video([random_image(50, 30, seed=i) for i in range(3)], [0.0, 1.0, 2.0], duration=3.0)
    specs = [
        ("text", "hi there", []),
        ("image", "<image>\nWhat is shown?", [p.process_image(random_image(70, 30), single_crop=False)]),
        ("video", "<video>\nWhat happens?", [video]),
        ("audio", "<audio>\nWhat is said?", [p.process_audio(random_waveform(12.0, seed=6))]),
        ("video+audio", "<video>\n<audio>\nDescribe it.", [video, p.process_audio(random_waveform(3.0, seed=5))]),
    ]

    def requests():
        return [Request(rid, p.build_prompt([ChatTurn("user", text)], media), media,
                        SamplingParams(max_tokens=3 + i, temperature=0, ignore_eos=True))
                for i, (rid, text, media) in enumerate(specs)]

    def engine():
        return Engine(tiny_audio_model.model, tiny_audio_model.tokenizer, tiny_audio_model.eos_token_ids)

    batched = run(engine(), requests(), arrival_steps=[0, 0, 1, 1, 3])
    solo_engine = engine()
    for r in requests():
        assert run(solo_engine, [r])[r.request_id].ids == batched[r.request_id].ids, r.request_id
    metrics = batched["video+audio"].final.metrics
    assert metrics.media_cache_hits == (True, False)  # the same video was encoded for an earlier request
    assert set(metrics.encoder_seconds) == {"audio"} and metrics.encoder_seconds["audio"] > 0
    assert set(batched["video"].final.metrics.encoder_seconds) == {"video"}


def test_items_out_of_sentinel_order_are_paired_as_the_model_pairs_them(tiny_audio_model):
    """<image> then <audio> in the prompt, the items given audio first: the engine's layout (block
    hashes, encoder planning, media reports) pairs each sentinel with the item the model splices there,
    so the tokens equal those of the items in placeholder order, and each report stays with its item."""
    p = tiny_audio_model.processor
    image = p.process_image(random_image(70, 30), single_crop=False)
    audio = p.process_audio(random_waveform(2.0, seed=3))
    prompt = p.build_prompt([ChatTurn("user", "<image>\n<audio>\nBoth?")], [image, audio])

    def engine():
        return Engine(tiny_audio_model.model, tiny_audio_model.tokenizer, tiny_audio_model.eos_token_ids)

    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    ordered = run(engine(), [Request("ordered", prompt, [image, audio], params)])["ordered"]
    swapped_engine = engine()
    swapped_engine.add_request(Request("swapped", prompt, [audio, image], params))
    layout = swapped_engine.requests["swapped"].layout
    assert [(s.key, s.item) for s in layout.media_spans] == [(swapped_engine.requests["swapped"].media_keys[1], 1),
                                                             (swapped_engine.requests["swapped"].media_keys[0], 0)]
    swapped = run(swapped_engine, [])["swapped"]
    assert swapped.ids == ordered.ids
    assert set(swapped.final.metrics.encoder_seconds) == {"image", "audio"}
    # the same content in the same positions: a second request in the other order hits the prefix cache
    again = run(swapped_engine, [Request("again", prompt, [image, audio], params)])["again"]
    assert again.ids == ordered.ids and again.final.metrics.num_cached_tokens > prompt.num_tokens // 2


def test_chunk_boundaries_do_not_change_tokens(new_engine, make_request):
    """Prompts computed in chunks of any size, boundaries inside images included: the same tokens."""

    def requests():
        return [make_request(f"s{i}", " ".join(["word"] * (2 + 3 * i)), images((40 + 20 * i, 50), seed=i) if i % 2 else [],
                             max_tokens=6) for i in range(4)]

    inside_image = 0
    results = {}
    for budget in (16, 37, 10**5):
        engine = new_engine(max_num_batched_tokens=budget)
        def observed(schedule=engine.scheduler.schedule):
            nonlocal inside_image
            plan = schedule()
            for c in plan.chunks:
                inside_image += any(s.start < c.start < s.stop for s in c.seq.state.layout.media_spans)
            return plan

        engine.scheduler.schedule = observed
        results[budget] = {rid: r.ids for rid, r in run(engine, requests()).items()}
    assert inside_image > 0  # a chunk started in the middle of an image's rows
    assert results[16] == results[37] == results[10**5]
    for request in requests():
        assert run(new_engine(), [request])[request.request_id].ids == results[16][request.request_id]


def test_batch_rows_give_way_to_an_interactive_request_and_resume_with_the_same_tokens(new_engine, make_request):
    """Batch requests hold every row; an interactive one arriving takes a row at the next step (the newest
    batch row is preempted), and the preempted row resumes later (recomputed) with its solo tokens."""
    def batch(rid, text):
        return dataclasses.replace(make_request(rid, text, max_tokens=12), priority=Priority.BATCH)

    engine = new_engine(max_num_seqs=2)
    for request in (batch("b1", "One batch line."), batch("b2", "Another batch line.")):
        engine.add_request(request)
    results: dict = {}
    for _ in range(4):
        collect(engine.step(), results)
    engine.add_request(make_request("i", "An interactive question.", max_tokens=5))
    collect(engine.step(), results)
    assert len(results["i"].ids) == 1  # its prompt ran at once, beside the older batch row
    assert engine.scheduler.num_preemptions == 1 and [s.request.request_id for s in engine.scheduler.waiting] == ["b2"]
    rest = run(engine, [])
    for request_id, out in rest.items():
        results[request_id].token_ids[0] += out.token_ids.get(0, [])
    stats = engine.stats()  # each class's computed positions: prompts, recomputes and decode tokens
    prompt = {r.request_id: r.num_prompt_tokens for r in (batch("b1", "One batch line."),
                                                          batch("b2", "Another batch line."),
                                                          make_request("i", "An interactive question."))}
    assert stats.num_interactive_tokens == prompt["i"] - rest["i"].final.metrics.num_cached_tokens + 5 - 1
    assert stats.num_batch_tokens > prompt["b1"] + prompt["b2"] + 2 * (12 - 1)  # and b2's recompute
    for rid, text, priority in (("b1", "One batch line.", True), ("b2", "Another batch line.", True),
                                ("i", "An interactive question.", False)):
        solo = run(new_engine(), [batch(rid, text) if priority else make_request(rid, text, max_tokens=5)])
        assert results[rid].ids == solo[rid].ids, rid
