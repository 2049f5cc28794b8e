"""Media encoding work: the one owner of what is being encoded, for whom, and what is left of it.

A request's media item is found in the encoder cache, joins an encoding already under way for
the same content (encoded once, however many requests want it), or starts one: an
`EncodingJob` (arch/encoding.py), a list of units that run over several steps. `MediaWork` keeps,
per content key, the job and the requests waiting for it. Data flows one way through a step:

    scheduler: `resolve` a prompt's items, plan units of `units_left` within the step budget
    runner:    runs the planned units of a job (`ModelRunner.run_encoder`)
    engine:    hands the result here (`finish` gives every waiter its rows, `fail` returns them)

A request that finishes leaves the waiters (`release`); a job nobody waits for is dropped.
Knows no scheduler, no runner and no engine.
"""

from __future__ import annotations

from collections.abc import Callable

from model_runtime.arch.encoding import EncodingJob
from model_runtime.engine.encoder_cache import EncoderCache
from model_runtime.engine.state import RequestState
from model_runtime.inputs import EncodedItem, MediaInput

StartEncoding = Callable[[MediaInput, int], EncodingJob]  # (item, crops per unit) -> its job


class MediaWork:
    def __init__(self, cache: EncoderCache, start_encoding: StartEncoding, token_flops: float) -> None:
        self.cache = cache
        self._start_encoding = start_encoding
        self._token_flops = token_flops  # a budget token's FLOPs: unit costs are priced in them
        self.max_crops = 1  # crops (frames) per unit of jobs started from now on; the engine sizes it
        self.jobs: dict[str, EncodingJob] = {}  # media key -> encoding under way
        self.waiters: dict[str, list[RequestState]] = {}  # media key -> requests waiting for it

    def resolve(self, state: RequestState, num_computed: int) -> None:
        """Find the rows of every item that positions from `num_computed` on need, or start encoding it."""
        for span in state.layout.media_spans:
            if span.stop <= num_computed or span.key in state.encoded:
                continue
            waiting = self.waiters.get(span.key)
            if waiting is not None:  # under way for this or another request
                if state not in waiting:
                    waiting.append(state)
                    self.cache.count_hit()
                state.note_media_reuse(span.item, True)
                continue
            found = self.cache.get(span.key)
            if found is not None:
                state.encoded[span.key] = found
                state.note_media_reuse(span.item, True)
                continue
            self.jobs[span.key] = self._start_encoding(state.request.media[span.item], self.max_crops)
            self.waiters[span.key] = [state]
            state.note_media_reuse(span.item, False)

    def units_left(self, key: str) -> list[float]:
        """Budget tokens of each unit of `key`'s encoding not run yet ([] when none is under way)."""
        job = self.jobs.get(key)
        return [] if job is None else [f / self._token_flops for f in job.remaining_flops()]

    def finish(self, key: str, item: EncodedItem) -> None:
        """`key`'s job is done: its rows go into the cache and to every request waiting for them."""
        job = self.jobs.pop(key)
        self.cache.put(key, item)
        for state in self.waiters.pop(key, []):
            state.encoded[key] = item
            state.encoder_seconds[item.modality] = state.encoder_seconds.get(item.modality, 0.0) + job.seconds

    def fail(self, key: str) -> list[RequestState]:
        """`key`'s job failed: it is dropped; the requests that waited for it are returned (to fail them)."""
        self.jobs.pop(key, None)
        return self.waiters.pop(key, [])

    def release(self, state: RequestState) -> None:
        """A finished request holds no rows and waits for nothing; work nobody waits for is dropped."""
        state.encoded.clear()
        for key in set(state.media_keys):
            waiting = self.waiters.get(key)
            if waiting is None or state not in waiting:
                continue
            waiting.remove(state)
            if not waiting:
                del self.waiters[key]
                self.jobs.pop(key, None)
