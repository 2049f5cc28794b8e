"""Engine faults injected inside the real model, for the fault-isolation tests (and the stress bench).

`FaultInjection` is installed as the runner's forward hook (`inject(engine, faults)`), which the
runner calls before the last decoder layer of every forward: earlier layers have already written
to the KV cache, as a real mid-forward failure would. Production code never sets that hook.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_runtime import Engine


@dataclass(frozen=True)
class FaultInjection:
    poison_request_ids: frozenset[str] = frozenset()  # a forward whose batch holds one of these raises
    poison_phases: frozenset[str] = frozenset({"prefill", "decode"})  # where the poison acts
    oom_over_rows: int | None = None  # a forward over more rows than this raises torch.OutOfMemoryError
    fatal_at_step: int | None = None  # the forward of this engine step (from 1) raises a fatal device error
    stall_at_step: int | None = None  # the forward of this engine step (from 1) sleeps `stall_seconds` (a hung device)
    stall_seconds: float = 0.0

    def __call__(self, step_index: int, rows: Sequence) -> None:
        if self.fatal_at_step is not None and step_index == self.fatal_at_step:
            raise RuntimeError("CUDA error: injected fatal device error")  # what the engine takes as fatal
        if self.stall_at_step is not None and step_index == self.stall_at_step:
            time.sleep(self.stall_seconds)
        if self.oom_over_rows is not None and len(rows) > self.oom_over_rows:
            raise torch.OutOfMemoryError(f"injected out of memory for {len(rows)} rows")
        for row in rows:
            phase = "decode" if row.is_decode else "prefill"
            if phase in self.poison_phases and row.row_id in self.poison_request_ids:
                raise RuntimeError("injected fault for a poisoned request")


def inject(engine: Engine, faults: FaultInjection) -> Engine:
    engine.runner.forward_hook = faults
    return engine
