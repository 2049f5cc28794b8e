"""The scheduler: decode rows first, prompt chunks within the step budget, admission by rows and
blocks, preemption of the newest sequence, prefix-cache hits at admission, encoder work before the
chunks that need it."""

from __future__ import annotations

import torch

from model_runtime import MediaInput, PromptInput, Request, SamplingParams
from model_runtime.arch.cost import LanguageCost
from model_runtime.engine.blocks import BlockPool, PromptLayout, extend_hashes
from model_runtime.engine.detokenizer import IncrementalDetokenizer
from model_runtime.engine.encoder_cache import EncoderCache
from model_runtime.engine.media_work import MediaWork
from model_runtime.engine.request import Priority
from model_runtime.engine.scheduler import Scheduler, SchedulerOutput
from model_runtime.engine.state import RequestState, SequenceState

BLOCK = 4
FLAT = LanguageCost(token_flops=1.0, pair_flops=0.0)  # a token costs one token, whatever its context


def sequence(rid: str, num_tokens: int, n: int = 1, first_id: int = 0, media=(),
             deadline: float | None = None, priority: Priority = Priority.INTERACTIVE) -> SequenceState:
    """`media`: (position in the ids, key, rows) of image items."""
    ids = list(range(first_id, first_id + num_tokens))
    for pos, _, _ in sorted(media, reverse=True):
        ids.insert(pos, -200)
    rows = sum(r for _, _, r in media)
    items = [MediaInput("image", torch.zeros(1), r) for _, _, r in media]  # the scheduler reads no tensor
    request = Request(rid, PromptInput(ids, num_tokens, rows), items, SamplingParams(max_tokens=4, n=n),
                      deadline=deadline, priority=priority)
    keys = tuple(k for _, k, _ in media)
    layout = PromptLayout.from_ids(ids, keys, [-200] * len(media), [r for _, _, r in media])
    state = RequestState(request, keys, layout, media_cache_hits=[None] * len(media))
    return SequenceState(state, 0, IncrementalDetokenizer(None), None)


def scheduler(num_blocks: int = 64, step_tokens: int = 16, max_num_seqs: int = 8, **kwargs) -> Scheduler:
    """A step in which nothing decodes has the same budget as any other here (idle_step_factor=1)."""
    kwargs.setdefault("idle_step_factor", 1)
    return Scheduler(max_num_seqs, step_tokens, BlockPool(num_blocks), BLOCK, FLAT, **kwargs)


class UnitJob:
    """Stands in for an `EncodingJob` (arch/encoding.py): units of given FLOPs, run in order."""

    def __init__(self, unit_flops: list[float]) -> None:
        self.unit_flops, self.num_done, self.seconds = unit_flops, 0, 0.0

    def remaining_flops(self) -> list[float]:
        return self.unit_flops[self.num_done :]


def commit(plan: SchedulerOutput, sample: int = 7) -> None:
    """What the engine does after a forward: positions computed, a token sampled at the end."""
    for c in plan.chunks:
        c.seq.num_computed = c.start + c.num_tokens
        if c.wants_logits:
            c.seq.output_ids.append(sample)


def chunks(plan: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(c.seq.request.request_id, c.start, c.num_tokens) for c in plan.chunks]


def test_decode_rows_first_then_prompt_chunks_within_the_budget():
    s = scheduler(step_tokens=16)
    short, long = sequence("short", 6), sequence("long", 40)
    s.add(short)
    plan = s.schedule()
    assert chunks(plan) == [("short", 0, 6)]
    commit(plan)
    s.add(long)
    seen = []
    for _ in range(4):
        plan = s.schedule()
        seen.append(chunks(plan))
        commit(plan)
    # the short request decodes every step; the long prompt takes what is left of 16 tokens per step
    assert seen == [[("short", 6, 1), ("long", 0, 15)], [("short", 7, 1), ("long", 15, 15)],
                    [("short", 8, 1), ("long", 30, 10)], [("short", 9, 1), ("long", 40, 1)]]
    assert s.pool.num_used == -(-10 // BLOCK) + -(-41 // BLOCK)


def test_attention_makes_late_chunks_smaller():
    cost = LanguageCost(token_flops=100.0, pair_flops=1.0)  # a key of context costs 1/100 of a token
    assert cost.chunk_tokens(10, 0) == 10 + 55 / 100
    assert cost.max_chunk(64, 0, 1000) > cost.max_chunk(64, 2000, 1000) >= 1
    assert cost.chunk_tokens(cost.max_chunk(64, 2000, 1000), 2000) <= 64 < cost.chunk_tokens(
        cost.max_chunk(64, 2000, 1000) + 1, 2000)


def test_admission_needs_rows_for_every_choice_and_free_blocks():
    s = scheduler(max_num_seqs=3, step_tokens=100)
    s.add(sequence("a", 4, n=2))
    s.add(sequence("b", 4, n=2))  # a reserves 2 rows: b's 2 do not fit in 3
    plan = s.schedule()
    assert chunks(plan) == [("a", 0, 4)] and s.num_rows == 2 and len(s.waiting) == 1
    small = scheduler(num_blocks=4, step_tokens=100)  # 3 usable blocks = 12 positions
    small.add(sequence("x", 8))
    small.add(sequence("y", 8))
    plan = small.schedule()
    assert chunks(plan) == [("x", 0, 8)]  # y's 8 positions need 2 blocks, 1 is free: y waits
    assert [q.request.request_id for q in small.waiting] == ["y"] and small.pool.num_free == 1
    commit(plan)
    small.remove(plan.chunks[0].seq)
    assert chunks(small.schedule()) == [("y", 0, 8)]


def test_the_newest_sequence_is_preempted_and_waits_at_the_head():
    s = scheduler(num_blocks=7, step_tokens=100)  # 6 usable blocks = 24 positions
    old, new = sequence("old", 11), sequence("new", 11)
    s.add(old)
    s.add(new)
    commit(s.schedule())  # 3 blocks each: both hold 12 positions
    assert s.pool.num_free == 0
    plan = s.schedule()  # both decode at position 11 (the 12th slot): fits
    commit(plan)
    plan = s.schedule()  # position 12 needs a 4th block each: none free -> "new" goes
    assert plan.preempted == [new] and chunks(plan) == [("old", 12, 1)]
    assert s.waiting[0] is new and new.block_ids == [] and new.num_computed == 0
    assert s.num_preemptions == 1
    commit(plan)
    s.remove(old)  # finished
    plan = s.schedule()
    assert chunks(plan) == [("new", 0, 13)]  # recomputed: prompt and its generated tokens


def test_admission_takes_the_prefix_cache_hits():
    s = scheduler(step_tokens=100)
    first = sequence("first", 10)
    s.add(first)
    commit(s.schedule())
    extend_hashes(first.block_hashes, first.state.layout, first.output_ids, 8, BLOCK)
    for block, h in zip(first.block_ids, first.block_hashes, strict=False):
        s.pool.register(block, h)
    s.remove(first)
    again = sequence("again", 10)
    s.add(again)
    plan = s.schedule()
    assert chunks(plan) == [("again", 8, 2)]  # two full blocks found; the last one is computed anyway
    assert (s.pool.num_queried_tokens, s.pool.num_hit_tokens) == (20, 8)  # both looked up, one found
    s.remove(again)
    exact = sequence("exact", 8)  # all of it cached: the last position is still computed for its logits
    s.add(exact)
    assert chunks(s.schedule()) == [("exact", 4, 4)]


def test_chunks_stop_before_media_that_are_not_encoded():
    started = []

    def start(item, max_crops):
        started.append(item)
        return UnitJob([12.0, 12.0, 12.0])  # three units of 12 tokens each (FLAT: a token is one FLOP)

    media = MediaWork(EncoderCache(0), start, token_flops=1.0)
    s = scheduler(step_tokens=30, media=media)
    seq = sequence("img", 6, media=[(3, "key", 20)])  # text 0-2, image rows 3-22, text 23-25
    s.add(seq)
    plan = s.schedule()
    # the encoding starts; two units fit with 6 tokens left; the image is not done, so the chunk stops at its first row
    assert media.waiters == {"key": [seq.state]} and len(started) == 1 and seq.state.media_cache_hits == [False]
    assert plan.encoder_work == [("key", 2)] and chunks(plan) == [("img", 0, 3)]
    media.jobs["key"].num_done += 2  # what the runner does with the plan
    commit(plan)
    plan = s.schedule()
    # the last unit runs this step, before the forward: the chunk may cover the image
    assert plan.encoder_work == [("key", 1)] and chunks(plan) == [("img", 3, 18)] and len(started) == 1
    media.release(seq.state)
    assert media.jobs == {} and media.waiters == {}  # nobody waits: the job is dropped


def test_expired_requests_come_out():
    s = scheduler()
    a, b = sequence("a", 4), sequence("b", 4, deadline=5.0)
    s.add(a)
    s.add(b)
    assert s.expired(now=4.0) == [] and s.expired(now=5.0) == [b.request]


def batch(rid: str, num_tokens: int, **kwargs) -> SequenceState:
    return sequence(rid, num_tokens, priority=Priority.BATCH, **kwargs)


def ids(seqs) -> list[str]:
    return [q.request.request_id for q in seqs]


def test_interactive_requests_are_admitted_before_batch_ones_that_came_first():
    s = scheduler(step_tokens=100)
    s.add(batch("b1", 4))
    s.add(batch("b2", 4))
    s.add(sequence("i1", 4))
    s.add(batch("b3", 4))
    s.add(sequence("i2", 4))
    assert ids(s.waiting) == ["i1", "i2", "b1", "b2", "b3"]  # class order, first come first served within it
    assert chunks(s.schedule()) == [("i1", 0, 4), ("i2", 0, 4), ("b1", 0, 4), ("b2", 0, 4), ("b3", 0, 4)]


def test_batch_prompts_take_only_the_budget_interactive_ones_leave():
    s = scheduler(step_tokens=20)
    s.add(batch("b", 40))
    commit(s.schedule())  # alone, the batch prompt takes the whole budget
    s.add(sequence("i", 12))
    plan = s.schedule()
    assert chunks(plan) == [("i", 0, 12), ("b", 20, 8)]  # the interactive prompt first, although it came later


def test_an_interactive_request_takes_the_rows_of_batch_ones():
    s = scheduler(max_num_seqs=2, step_tokens=100)
    older, newer = batch("older", 4), batch("newer", 4)
    s.add(older)
    s.add(newer)
    commit(s.schedule())
    s.add(sequence("i", 4))
    plan = s.schedule()
    # every row is held by batch rows: the newest one goes back to the head of the batch queue
    assert plan.preempted == [newer] and chunks(plan) == [("older", 4, 1), ("i", 0, 4)]
    assert ids(s.running) == ["older", "i"] and ids(s.waiting) == ["newer"]
    commit(plan)
    s.remove(s.running[1])  # the interactive request finishes
    assert chunks(s.schedule()) == [("older", 5, 1), ("newer", 0, 5)]  # the batch row resumes: prompt + token


def test_an_interactive_request_takes_the_blocks_of_batch_ones_never_the_reverse():
    s = scheduler(num_blocks=7, step_tokens=100)  # 6 usable blocks = 24 positions
    b = batch("b", 20)
    s.add(b)
    commit(s.schedule())  # 5 blocks held by the batch row
    s.add(sequence("i", 8))
    plan = s.schedule()  # 2 blocks wanted, 1 free: the batch row is preempted for the interactive admission
    assert plan.preempted == [b] and chunks(plan) == [("i", 0, 8)]
    # a running batch row that needs a block preempts itself, not a newer interactive row
    s = scheduler(num_blocks=7, step_tokens=100)
    older, newer = batch("older", 11), sequence("newer", 11)
    s.add(older)
    commit(s.schedule())
    s.add(newer)
    commit(s.schedule())  # the older decodes at position 11 (its 12th slot), the newer's prompt: 3 blocks each
    assert s.pool.num_free == 0
    plan = s.schedule()  # the older's position 12 needs a 4th block: the batch row goes, not the newer row
    assert plan.preempted == [older] and chunks(plan) == [("newer", 11, 1)]
    assert ids(s.waiting) == ["older"]
