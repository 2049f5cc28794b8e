"""The model runner: encoder jobs, the paged KV cache and the language model's packed forward.

`forward(rows)` runs one step's tokens of every scheduled sequence packed into one row: decode
rows' single tokens are embedded directly, prompt chunks are spliced by
`prepare_inputs_for_multimodal(spans=...)` (left-padded, then only real positions are kept), and
the decoder layers run over the packed tokens with paged attention (arch/attention.py), which
writes each token's keys and values into its sequence's blocks. Logits come back only for rows
that sample. A failed forward changes nothing the scheduler relies on: only positions not yet
counted as computed were written. `run_encoder(job, units)` runs the units of one media item's
encoding that the step's plan names (arch/encoding.py; which jobs exist is media_work.py's). The
runner never touches scheduler state and knows nothing of sampling or text. It reads the model
only through `ServedModel` (served_model.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model_runtime.arch.attention import ATTN_IMPLEMENTATION
from model_runtime.arch.encoding import EncodingJob
from model_runtime.arch.lora_layers import LoraStep
from model_runtime.config import EngineConfig
from model_runtime.engine.kv import KVCache, StepRow, paged_inputs
from model_runtime.engine.served_model import ServedModel
from model_runtime.inputs import EncodedItem, MediaInput

log = logging.getLogger(__name__)

# Messages of accelerator errors after which the device state cannot be trusted.
_FATAL_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "unspecified launch failure",
                  "NCCL error", "HIP error")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


def is_fatal(error: BaseException) -> bool:
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return (isinstance(error, RuntimeError) and not is_out_of_memory(error)
            and any(m in str(error) for m in _FATAL_MARKERS))


@dataclass(frozen=True)
class ForwardRow:
    """One sequence's positions [start, start + num_tokens) in a forward."""

    row_id: str  # the request id (logs, and the forward hook)
    token_ids: Sequence[int]  # the sequence's ids: prompt (sentinels for media) + generated; decode: the last one
    items: Sequence[EncodedItem | MediaInput]  # its media, encoded where the span needs them
    start: int
    num_tokens: int
    block_ids: Sequence[int]
    wants_logits: bool
    is_decode: bool  # one generated token: embedded directly
    lora_slot: int | None = None  # the adapter slot its tokens run under (arch/lora_layers.py); None: the base


ForwardHook = Callable[[int, Sequence[ForwardRow]], None]


@dataclass
class IsolatedForward:
    """A forward retried in parts until only the rows that fail on their own are left out."""

    groups: list[tuple[list[int], torch.Tensor]]  # indices of rows computed together, and their logits
    failed: list[tuple[int, str]]  # index of each row whose forward failed alone, and why


class ModelRunner:
    def __init__(self, model: ServedModel, config: EngineConfig, num_blocks: int) -> None:
        self.model = model
        self.max_rows = config.max_num_seqs  # rows in one forward; halved after an out-of-memory error
        self.num_out_of_memory = 0  # out-of-memory errors recovered by splitting a forward
        self.device = model.compute_device
        self.layers = model.decoder_layers
        self.kv = KVCache(model, num_blocks, config.block_size)
        self.forward_seconds = 0.0  # LM forwards, cumulative
        self.encoder_seconds = 0.0  # media encoder work, cumulative
        self.step_index = 0  # the engine step (from 1) this forward belongs to; set by the engine
        # called before the last decoder layer of every forward with (step_index, rows), so a fault
        # it raises leaves the earlier layers' KV written, as a real mid-forward failure would (tests)
        self.forward_hook: ForwardHook | None = None
        self.lora_step: LoraStep | None = None  # set once adapters are attached: which tokens run under which

    # -- encoders ---------------------------------------------------------------------------
    @torch.inference_mode()
    def run_encoder(self, job: EncodingJob, num_units: int) -> EncodedItem | None:
        """Advance `job` by `num_units`; its rows once it is done."""
        start = time.perf_counter()
        try:
            job.run(num_units)
        finally:
            seconds = self._elapsed(start)
            job.seconds += seconds
            self.encoder_seconds += seconds
        return job.result() if job.is_done else None

    # -- the language model -----------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, rows: Sequence[ForwardRow]) -> torch.Tensor:
        """Compute every row's positions; next-token logits [rows wanting them, V] float32."""
        lm = self.model
        attn = lm.text_config._attn_implementation
        if attn != ATTN_IMPLEMENTATION:
            raise RuntimeError(f"the engine needs attn_implementation={ATTN_IMPLEMENTATION!r}, not {attn!r}")
        embeds, positions = self._inputs(rows)
        step_rows, query_start = [], 0
        for row in rows:
            step_rows.append(StepRow(query_start, row.num_tokens, row.start, row.block_ids))
            query_start += row.num_tokens
        paged = paged_inputs(self.kv, step_rows, self.device)
        ends = torch.tensor([r.query_start + r.num_queries - 1 for r, row in zip(step_rows, rows, strict=True)
                             if row.wants_logits], dtype=torch.long, device=self.device)
        if self.lora_step is not None:
            self.lora_step.groups = _lora_groups(step_rows, rows, self.device)
        start = time.perf_counter()
        try:
            hidden = embeds[None]  # [1, T, D]
            position_ids = positions[None]
            position_embeddings = lm.rotary_embeddings(hidden, position_ids)
            for i, layer in enumerate(self.layers):
                if self.forward_hook is not None and i == len(self.layers) - 1:
                    self.forward_hook(self.step_index, rows)
                hidden = layer(hidden, attention_mask=None, position_ids=position_ids,
                               position_embeddings=position_embeddings, paged=paged)
            logits = lm.next_token_logits(hidden[0].index_select(0, ends.to(hidden.device)))  # [R, V]
        finally:
            self.forward_seconds += self._elapsed(start)
            if self.lora_step is not None:
                self.lora_step.groups = []
        return logits

    def forward_isolated(self, rows: Sequence[ForwardRow]) -> IsolatedForward:
        """`forward` over at most `max_rows` rows at a time; a failing forward is retried in halves (out
        of memory: `max_rows` shrinks too) or row by row, so only the rows that fail alone fail. A fatal
        device error propagates (`is_fatal`)."""
        result = IsolatedForward([], [])
        indices = list(range(len(rows)))
        for start in range(0, len(rows), self.max_rows):
            self._forward_part(rows, indices[start : start + self.max_rows], result)
        return result

    def _forward_part(self, rows: Sequence[ForwardRow], part: list[int], result: IsolatedForward) -> None:
        try:
            result.groups.append((part, self.forward([rows[i] for i in part])))
            return
        except Exception as error:
            if is_fatal(error):
                raise
            if len(part) == 1:
                log.error("the forward failed for %s", rows[part[0]].row_id, exc_info=error)
                result.failed.append((part[0], f"{type(error).__name__}: {error}"[:500]))
                return
            if is_out_of_memory(error):
                self.num_out_of_memory += 1
                half = len(part) // 2
                self.max_rows = max(1, min(self.max_rows, half))
                pieces = [part[:half], part[half:]]
            else:
                pieces = [[i] for i in part]
            log.warning("a forward of %d sequences failed (%s); retrying in %d parts",
                        len(part), type(error).__name__, len(pieces))
        for piece in pieces:
            self._forward_part(rows, piece, result)

    def _inputs(self, rows: Sequence[ForwardRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed embeddings [T, D] and positions [T] of every row's positions, in row order (decode
        rows first)."""
        num_decode = sum(1 for r in rows if r.is_decode)
        if any(r.is_decode for r in rows[num_decode:]):
            raise ValueError("decode rows must come before prompt chunks")
        embeds, positions = [], []
        if num_decode:
            ids = torch.tensor([r.token_ids[-1] for r in rows[:num_decode]], dtype=torch.long, device=self.device)
            embeds.append(self.model.embed_ids(ids))
            positions.append(torch.tensor([r.start for r in rows[:num_decode]], dtype=torch.long, device=self.device))
        chunks = rows[num_decode:]
        if chunks:
            padded, _, padded_positions = self.model.prepare_inputs_for_multimodal(
                [r.token_ids for r in chunks], [r.items for r in chunks], padding_side="left",
                spans=[(r.start, r.start + r.num_tokens) for r in chunks],
            )
            # left-padded [R, L, D]: each row's real positions are its last num_tokens columns
            for j, r in enumerate(chunks):
                embeds.append(padded[j, -r.num_tokens :])
                positions.append(padded_positions[j, -r.num_tokens :])
        return torch.cat(embeds), torch.cat(positions)

    # -- internals --------------------------------------------------------------------------
    def _elapsed(self, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def _lora_groups(step_rows: Sequence[StepRow], rows: Sequence[ForwardRow],
                 device: torch.device) -> list[tuple[int, torch.Tensor]]:
    """(adapter slot, indices of its tokens in the packed axis) for every slot with tokens in this forward."""
    tokens: dict[int, list[int]] = {}
    for step_row, row in zip(step_rows, rows, strict=True):
        if row.lora_slot is not None:
            tokens.setdefault(row.lora_slot, []).extend(
                range(step_row.query_start, step_row.query_start + step_row.num_queries))
    return [(slot, torch.tensor(ids, dtype=torch.long, device=device)) for slot, ids in sorted(tokens.items())]
