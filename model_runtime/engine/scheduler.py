"""The scheduler: which positions of which sequences each step computes, and which encoder work runs.

Every step has a budget (`EngineConfig.max_num_batched_tokens`, in prompt tokens at zero
context: a later prompt token also pays for the attention over its context, a slice of encoder
work for its FLOPs; arch/cost.py). Each step:

1. every running sequence that decodes takes one token (all of them, budget or not); a step in
   which none decodes has `idle_step_factor` times the budget (no stream waits on it);
2. running sequences still computing their prompt (or recomputing after a preemption), oldest
   first, then waiting ones, each get the encoder units their next media items need and a chunk
   of positions, while budget is left; a chunk stops before a media item that is not encoded
   (its last unit may run in the same step: the runner encodes before the forward);
3. a waiting sequence is admitted only while rows (`max_num_seqs`; a new request reserves all of
   its `n` choices) and KV blocks for its first chunk are free; its prompt first takes whatever
   full blocks the prefix cache holds for it.

When a running sequence needs a block and none is free, the newest running sequence is preempted:
its blocks go back (full ones stay in the prefix cache) and it waits at the head of the queue to
be recomputed, prompt and generated tokens, before it continues. Sees no tensors: KV blocks are
ids from `BlockPool`; media encodings are `MediaWork`'s (media_work.py), which finds or starts a
prompt's encodings and says what their units left cost; the plan names the units to run, the
runner runs them. What one `schedule()` call decides so far (the output, the budget left, the
units planned, who has a chunk) is a `StepPlanner` made for that call, not scheduler state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model_runtime.arch.cost import LanguageCost
from model_runtime.engine.blocks import BlockPool, extend_hashes
from model_runtime.engine.media_work import MediaWork
from model_runtime.engine.request import Request, RequestStatus
from model_runtime.engine.state import SequenceState


@dataclass
class ScheduledChunk:
    """Positions [start, start + num_tokens) of `seq` computed this step."""

    seq: SequenceState
    start: int
    num_tokens: int

    @property
    def wants_logits(self) -> bool:
        """The chunk reaches the sequence's last token: sample the next one."""
        return self.start + self.num_tokens == self.seq.num_tokens

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.start >= self.seq.request.num_prompt_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)  # decode rows first, then prompt chunks
    encoder_work: list[tuple[str, int]] = field(default_factory=list)  # (media key, units to run), in order
    preempted: list[SequenceState] = field(default_factory=list)
    fresh_blocks: list[int] = field(default_factory=list)  # handed out for the first time: zero them
    prompt_cost: float = 0.0  # budget tokens spent on prompt chunks
    encoder_cost: float = 0.0  # budget tokens of encoder work planned, before `Scheduler.encoder_price`

    @property
    def num_decode_tokens(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if not c.is_decode)


@dataclass
class StepPlanner:
    """One `schedule()` call's decisions so far: the plan, the budget left, encoder units planned."""

    out: SchedulerOutput
    budget: float  # budget tokens left
    start_budget: float
    planned: dict[str, int] = field(default_factory=dict)  # media key -> units planned this step
    scheduled: dict[int, ScheduledChunk] = field(default_factory=dict)  # id(seq) -> its chunk

    @property
    def has_prompt_work(self) -> bool:
        return any(not c.is_decode for c in self.out.chunks)

    def add_chunk(self, chunk: ScheduledChunk) -> None:
        self.out.chunks.append(chunk)
        self.scheduled[id(chunk.seq)] = chunk

    def drop_chunk(self, seq: SequenceState) -> None:
        chunk = self.scheduled.pop(id(seq), None)
        if chunk is not None:
            self.out.chunks.remove(chunk)

    def has_encoder_work(self, seq: SequenceState) -> bool:
        return any(self.planned.get(key) for key in seq.state.media_keys)


class Scheduler:
    def __init__(self, max_num_seqs: int, step_tokens: int, pool: BlockPool, block_size: int, cost: LanguageCost,
                 media: MediaWork | None = None, idle_step_factor: int = 1) -> None:
        self.max_num_seqs = max_num_seqs  # lowered by the engine after an out-of-memory error
        self.step_tokens = step_tokens
        self.idle_step_factor = idle_step_factor  # the budget's multiple in steps where no sequence decodes
        self.encoder_price = 1.0  # an encoder unit's budget tokens are worth this many prompt tokens (pacing.py)
        self.pool = pool
        self.block_size = block_size
        self.cost = cost
        self.media = media  # None: no request has media
        self.waiting: deque[SequenceState] = deque()
        self.running: list[SequenceState] = []  # hold blocks; admission order (the last is the newest)
        self.num_preemptions = 0

    # -- queue ------------------------------------------------------------------------------
    def add(self, seq: SequenceState) -> None:
        self._enqueue(seq)

    def add_running(self, seq: SequenceState) -> None:
        """A sequence that starts out holding blocks (choices 1..n-1 sharing choice 0's prompt)."""
        seq.status = RequestStatus.RUNNING
        self.running.append(seq)

    def remove(self, seq: SequenceState) -> None:
        """Take a sequence out (finished or aborted) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._free(seq)

    @property
    def num_rows(self) -> int:
        """Rows held: running sequences, plus the choices a running choice 0 will fork into."""
        return sum(1 + s.reserved_rows for s in self.running)

    @property
    def num_decoding(self) -> int:
        return sum(1 for seq in self.running if seq.is_decoding)

    def num_kv_tokens(self) -> int:
        """Positions held in KV blocks by running sequences, each shared position once."""
        filled: dict[int, int] = {}
        bs = self.block_size
        for seq in self.running:
            for i, block in enumerate(seq.block_ids):
                n = min(bs, max(0, seq.num_computed - i * bs))
                if n > filled.get(block, 0):
                    filled[block] = n
        return sum(filled.values())

    def expired(self, now: float) -> list[Request]:
        out: dict[int, Request] = {}
        for seq in (*self.waiting, *self.running):
            r = seq.request
            if r.deadline is not None and now >= r.deadline:
                out.setdefault(id(r), r)
        return list(out.values())

    # -- one step ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        # nobody waits for a token: a longer step stalls no stream and runs prompt work more efficiently
        budget = float(self.step_tokens * (1 if self.num_decoding else self.idle_step_factor))
        step = StepPlanner(SchedulerOutput(), budget, budget)
        for seq in list(self.running):
            if seq.is_decoding and seq in self.running and self._grow(seq, seq.num_computed + 1, step):
                step.add_chunk(ScheduledChunk(seq, seq.num_computed, 1))
                step.budget -= 1
        # prompt work class by class: a class's running prompts, then its waiting requests, then the next class
        for priority in sorted({s.request.priority for s in (*self.running, *self.waiting)}):
            for seq in [s for s in self.running if s.request.priority == priority]:
                if seq in self.running and id(seq) not in step.scheduled:
                    self._schedule_prompt(seq, step)
            if not self._admit_waiting(priority, step):
                break  # the head of a higher class waits: no lower class is admitted before it
        out = step.out
        out.prompt_cost = step.start_budget - step.budget - out.num_decode_tokens - out.encoder_cost * self.encoder_price
        return out

    def _admit_waiting(self, priority: int, step: StepPlanner) -> bool:
        """Admit waiting sequences of `priority` while budget is left; False if its head could not start."""
        while self.waiting and self.waiting[0].request.priority == priority:
            seq = self.waiting[0]
            if step.budget <= 0 or not self._make_rows(seq, step) or not self._admit(seq, step):
                return False
        return True

    def _make_rows(self, seq: SequenceState, step: StepPlanner) -> bool:
        """Rows for `seq` and the choices it will fork into, preempting running sequences of lower classes
        if it must; a sequence that finds nothing running starts whatever its `n`."""
        while self.running and self.num_rows + 1 + seq.reserved_rows > self.max_num_seqs:
            victim = self._victim(seq, admitting=True)
            if victim is None:
                return False
            self._preempt(victim, step)
        return True

    def _victim(self, seq: SequenceState, admitting: bool) -> SequenceState | None:
        """Whom to preempt for `seq`: the newest running sequence of the lowest class, never of a class
        above `seq`'s; one being admitted preempts only lower classes, a running one its own class too
        (itself included)."""
        victim = None
        for other in reversed(self.running):  # newest first
            priority = other.request.priority
            if priority < seq.request.priority or (admitting and priority == seq.request.priority):
                continue
            if victim is None or priority > victim.request.priority:
                victim = other
        return victim

    def _admit(self, seq: SequenceState, step: StepPlanner) -> bool:
        """Try to start the head of the queue; True if it runs (and holds blocks) now."""
        seq.block_ids = self._lookup_prefix(seq)
        seq.num_computed = num_hits = len(seq.block_ids) * self.block_size
        self.waiting.popleft()
        self.running.append(seq)
        seq.status = RequestStatus.RUNNING
        self._schedule_prompt(seq, step, admitting=True)
        if id(seq) not in step.scheduled and not step.has_encoder_work(seq):
            # nothing could run (no free blocks for a first chunk): back to the head of the queue
            self.running.remove(seq)
            self._free(seq)
            self._enqueue(seq, first=True)
            return False
        if self.pool.enable_prefix_caching:
            self.pool.count_query(seq.num_tokens, num_hits)
        if seq.index == 0 and seq.state.scheduled_time is None:  # its first admission, not a recompute
            seq.state.num_cached_tokens = num_hits
        return True

    def _enqueue(self, seq: SequenceState, first: bool = False) -> None:
        """Into the queue in class order: at the end of its class, or (`first`: preempted, or refused at
        admission) at its head."""
        seq.status = RequestStatus.WAITING
        priority = seq.request.priority
        position = next((i for i, w in enumerate(self.waiting)
                         if w.request.priority > priority or (first and w.request.priority == priority)),
                        len(self.waiting))
        self.waiting.insert(position, seq)

    def _lookup_prefix(self, seq: SequenceState) -> list[int]:
        if not self.pool.enable_prefix_caching:
            return []
        # at least the last position is computed, so its logits exist
        usable = (seq.num_tokens - 1) // self.block_size
        if len(seq.block_hashes) < usable:
            extend_hashes(seq.block_hashes, seq.state.layout, seq.output_ids, usable * self.block_size,
                          self.block_size)
        hits = self.pool.lookup(seq.block_hashes, usable)
        seq.num_registered = len(hits)
        return hits

    def _schedule_prompt(self, seq: SequenceState, step: StepPlanner, admitting: bool = False) -> None:
        """Encoder units and a chunk for a sequence whose prompt (or recompute) is not done."""
        pos = seq.num_computed
        limit = self._plan_media(seq, step)
        n = self.cost.max_chunk(step.budget, pos, limit - pos)
        if n == 0 and not step.has_prompt_work and limit > pos:
            n = 1  # every step moves some prompt forward
        if n == 0 or not self._grow(seq, pos + n, step, admitting) or seq not in self.running:
            return  # no room, or it preempted itself to make some
        step.add_chunk(ScheduledChunk(seq, pos, n))
        step.budget -= self.cost.chunk_tokens(n, pos)

    def _plan_media(self, seq: SequenceState, step: StepPlanner) -> int:
        """Plan the encoder units `seq`'s next items need; the position its chunk must stop before
        (the first item not encoded by the end of this step), or its end."""
        state = seq.state
        if not state.media_keys or self.media is None:
            return seq.num_tokens
        self.media.resolve(state, seq.num_computed)
        for span in state.layout.media_spans:
            if span.stop <= seq.num_computed or span.key in state.encoded:
                continue
            self._plan_encoder(span.key, step)
            if len(self.media.units_left(span.key)) > step.planned.get(span.key, 0):
                return span.start  # not encoded by the end of this step
        return seq.num_tokens

    def _plan_encoder(self, key: str, step: StepPlanner) -> None:
        assert self.media is not None
        units = self.media.units_left(key)
        planned = start = step.planned.get(key, 0)
        out = step.out
        nothing_yet = not out.encoder_work and not step.has_prompt_work
        while planned < len(units) and (units[planned] * self.encoder_price <= step.budget
                                         or (nothing_yet and planned == start == 0)):
            step.budget -= units[planned] * self.encoder_price
            out.encoder_cost += units[planned]
            planned += 1
            nothing_yet = False
        if planned > start:
            step.planned[key] = planned
            out.encoder_work.append((key, planned - start))

    # -- blocks -----------------------------------------------------------------------------
    def _grow(self, seq: SequenceState, num_positions: int, step: StepPlanner, admitting: bool = False) -> bool:
        """Make `seq` hold blocks for `num_positions` positions, preempting running sequences if it must
        (`_victim`: the newest of the lowest class; a sequence being admitted preempts only lower classes).
        False if `seq` itself had to go, or no blocks could be had."""
        need = -(-num_positions // self.block_size) - len(seq.block_ids)
        if need <= 0:
            return True
        while self.pool.num_free < need:
            victim = self._victim(seq, admitting)
            if victim is None:
                return False
            self._preempt(victim, step)
            if victim is seq:
                return False
        expect = -(-seq.num_tokens // self.block_size) - len(seq.block_ids)  # what its known tokens need in all
        blocks, fresh = self.pool.allocate(need, after=seq.block_ids[-1] if seq.block_ids else None,
                                           chunk=num_positions - seq.num_computed > 1 or expect > need, expect=expect)
        seq.block_ids += blocks
        step.out.fresh_blocks += fresh
        return True

    def _preempt(self, seq: SequenceState, step: StepPlanner) -> None:
        self.running.remove(seq)
        step.drop_chunk(seq)
        self._free(seq)
        self._enqueue(seq, first=True)
        step.out.preempted.append(seq)
        self.num_preemptions += 1

    def _free(self, seq: SequenceState) -> None:
        self.pool.release(seq.block_ids)
        seq.block_ids = []
        seq.num_computed = 0
        seq.num_registered = 0
