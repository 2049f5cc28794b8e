"""The scheduler: which requests to prefill this step, or whether to decode the running batch.

Waiting requests are admitted first come, first served (never skipping the head) while there are
free rows (`max_num_seqs`; a request takes `n` rows) and the padded prefill stays within
`max_prefill_tokens` (the head is always admitted alone if it is longer). A step either prefills
or decodes; after a prefill, the next step decodes whenever rows are running, so a long prefill
(a video) delays decoding by at most one step at a time. Sees no tensors: `running` is the list
of sequences in batch-row order, which the engine keeps aligned with the cache rows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model_runtime.engine.request import Request, RequestStatus, Sequence


@dataclass(frozen=True)
class SchedulerOutput:
    """What the engine runs this step: a prefill, a decode, or nothing (only `expired` to abort)."""

    prefill: list[Request] = field(default_factory=list)  # admitted now, FCFS; prefilled together
    is_decode: bool = False  # decode one token for every running row
    expired: list[Request] = field(default_factory=list)  # past their deadline: abort before running


class Scheduler:
    def __init__(self, max_num_seqs: int, max_prefill_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs  # lowered by the engine after an out-of-memory error
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []  # row i of the batch cache
        self.was_prefill = False  # the last step prefilled

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def requeue(self, requests: list[Request]) -> None:
        """Put admitted requests back at the head of the queue, in order."""
        for request in reversed(requests):
            request.status = RequestStatus.WAITING
            self.waiting.appendleft(request)

    def remove_waiting(self, request: Request) -> None:
        self.waiting.remove(request)

    @property
    def num_free_rows(self) -> int:
        return self.max_num_seqs - len(self.running)

    def schedule(self, now: float) -> SchedulerOutput:
        expired = self._expired(now)
        if expired:
            return SchedulerOutput(expired=expired)
        if self.waiting and not (self.was_prefill and self.running):
            admitted = self._admit()
            if admitted:
                self.was_prefill = True
                return SchedulerOutput(prefill=admitted)
        self.was_prefill = False
        return SchedulerOutput(is_decode=bool(self.running))

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        num_rows = 0
        longest = 0
        while self.waiting:
            head = self.waiting[0]
            new_longest = max(longest, head.num_prompt_tokens)
            # NOTE: an empty batch admits its head even above a cap lowered after out-of-memory
            if num_rows + head.params.n > self.num_free_rows and (admitted or self.running):
                break
            if admitted and (len(admitted) + 1) * new_longest > self.max_prefill_tokens:
                break
            admitted.append(self.waiting.popleft())
            head.status = RequestStatus.RUNNING
            num_rows += head.params.n
            longest = new_longest
        return admitted

    def _expired(self, now: float) -> list[Request]:
        out = [r for r in self.waiting if r.deadline is not None and now >= r.deadline]
        seen = {id(r) for r in out}
        for seq in self.running:
            r = seq.request
            if r.deadline is not None and now >= r.deadline and id(r) not in seen:
                seen.add(id(r))
                out.append(r)
        return out
