"""Step pacing: the CPU's default step budget, sized from how long this engine's own steps take.

A stream's token gap is the length of the steps it waits through, so the budget that matters is
time, not tokens. With no `max_num_batched_tokens` on the CPU the engine aims every step in which
some sequence decodes at `step_seconds` of wall time: it learns three numbers from the steps it
runs and sizes the next step's prompt and encoder work with them.

- `decode_seconds`: what a step of decode rows alone costs (the weights read once, the sampler,
  the bookkeeping); learnt from steps with no other work, per decode row count seen.
- `token_seconds`: what one budget token of prompt work adds to a step (the budget's token already
  prices attention over context, arch/cost.py).
- `encoder_seconds`: what one budget token of media-encoder work adds (the tower's FLOPs priced as
  language-model tokens; its matmuls run at another rate than the language model's).

The last two are learnt from steps with such work, after taking the decode rows' share away: the
step's time over its predicted time corrects each rate in proportion to its share of the
prediction. The scheduler prices encoder work at `encoder_price` (encoder_seconds over
token_seconds), so the budget is in seconds' worth of prompt tokens:
budget for a step with decode rows = (step_seconds - decode_seconds) / token_seconds, at least
`min_tokens` so prompts always move. Steps where nothing decodes stall no stream and get
`idle_factor` x step_seconds. Estimates are exponential moving averages, each observation clamped
to a factor of the current estimate, so one step slowed by a neighbour on the machine moves the
budget only a little. The first estimate of both rates comes from a matmul of the model's own
shape timed at start-up (`cpu_token_rate`), so the first steps are sized before any has run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from model_runtime.arch.cost import LanguageCost
from model_runtime.config.engine import IDLE_STEP_FACTOR
from model_runtime.engine.served_model import ServedModel

log = logging.getLogger(__name__)

SMOOTHING = 0.3  # weight of a new observation
MAX_JUMP = 2.0  # one observation moves an estimate by at most this factor
MIN_OBSERVED_TOKENS = 8  # work below this many budget tokens says too little about a rate


@dataclass
class StepPacer:
    step_seconds: float  # target wall time of a step in which some sequence decodes
    token_seconds: float  # seconds per budget token of prompt work (first: from the timed matmul)
    encoder_seconds: float = 0.0  # seconds per budget token of encoder work (0: token_seconds at first)
    min_tokens: int = 32
    max_tokens: int = 8192
    idle_factor: int = IDLE_STEP_FACTOR
    decode_seconds: dict[int, float] = field(default_factory=dict)  # decode rows -> seconds of such a step

    def __post_init__(self) -> None:
        self.encoder_seconds = self.encoder_seconds or self.token_seconds

    @property
    def encoder_price(self) -> float:
        """A budget token of encoder work, in budget tokens of prompt work."""
        return self.encoder_seconds / self.token_seconds

    def budget(self, num_decode_rows: int) -> int:
        """Budget tokens for a step with `num_decode_rows` decode rows (0: nothing decodes)."""
        if num_decode_rows == 0:
            seconds = self.step_seconds * self.idle_factor
        else:
            seconds = self.step_seconds - self.decode_estimate(num_decode_rows)
        tokens = int(seconds / self.token_seconds) if seconds > 0 else 0
        return max(self.min_tokens, min(self.max_tokens, tokens))

    def decode_estimate(self, num_decode_rows: int) -> float:
        """Seconds of a step of `num_decode_rows` decode rows: the nearest row count seen, scaled
        linearly above it (more rows only add work); before any, a budget token per row."""
        if not self.decode_seconds:
            return num_decode_rows * self.token_seconds
        below = [n for n in self.decode_seconds if n <= num_decode_rows]
        nearest = max(below) if below else min(self.decode_seconds)
        seconds = self.decode_seconds[nearest]
        return seconds * num_decode_rows / nearest if num_decode_rows > nearest else seconds

    def observe(self, num_decode_rows: int, prompt_tokens: float, seconds: float, encoder_tokens: float = 0.0) -> None:
        """A step ran: `num_decode_rows` decode rows, `prompt_tokens` budget tokens of prompt work
        and `encoder_tokens` of encoder work (unpriced) took `seconds`."""
        if seconds <= 0:
            return
        if prompt_tokens <= 0 and encoder_tokens <= 0:
            if num_decode_rows > 0:
                old = self.decode_seconds.get(num_decode_rows)
                self.decode_seconds[num_decode_rows] = seconds if old is None else _blend(old, seconds)
            return
        if prompt_tokens + encoder_tokens < MIN_OBSERVED_TOKENS:
            return
        decode = self.decode_estimate(num_decode_rows) if num_decode_rows else 0.0
        work = max(seconds - decode, 0.25 * seconds)  # noise can exceed the decode share
        prompt, encoder = prompt_tokens * self.token_seconds, encoder_tokens * self.encoder_seconds
        ratio = work / (prompt + encoder)
        self.token_seconds = _blend(self.token_seconds, self.token_seconds * ratio, prompt / (prompt + encoder))
        self.encoder_seconds = _blend(self.encoder_seconds, self.encoder_seconds * ratio, encoder / (prompt + encoder))


def _blend(old: float, new: float, share: float = 1.0) -> float:
    new = min(max(new, old / MAX_JUMP), old * MAX_JUMP)
    weight = SMOOTHING * share
    return (1 - weight) * old + weight * new


def cpu_token_rate(model: ServedModel, cost: LanguageCost) -> float:
    """Budget tokens per second this CPU's matmul promises: the pacer's first estimate, before any
    step has run (the CPU's speed varies a hundredfold between machines and dtypes). Timed on the
    model's own matmul shape, on 256 rows where it runs at its full rate, unless 16 rows already
    show it is slow."""
    device, dtype = model.compute_device, model.compute_dtype
    inner, outer = model.text_config.hidden_size, model.text_config.intermediate_size
    flops = _matmul_flops(device, dtype, 16, inner, outer)
    if flops > 5e9:
        flops = _matmul_flops(device, dtype, 256, inner, outer)
    if dtype != torch.float32:
        fp32 = _matmul_flops(device, torch.float32, 16, inner, outer)
        if fp32 > 4 * flops:
            log.warning("this CPU multiplies %s matrices %.0fx slower than float32 (%.1f against %.1f GFLOP/s): "
                        "serve with --dtype float32", str(dtype).removeprefix("torch."), fp32 / flops,
                        flops / 1e9, fp32 / 1e9)
    return flops / cost.token_flops


def _matmul_flops(device: torch.device, dtype: torch.dtype, rows: int, inner: int, outer: int) -> float:
    a = torch.randn(rows, inner, dtype=dtype, device=device)
    b = torch.randn(inner, outer, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * rows * inner * outer / best
