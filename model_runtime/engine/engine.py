"""The generation engine: a synchronous `step()` over a left-padded batch.

Each step either prefills the requests waiting at that moment as one batch (media encoded in one
tower call, spliced with LEFT padding, positions = cumsum(mask) - 1) or decodes one token for
every running row. Rows that finish leave the batch between steps. Requests that arrive while a
batch runs wait for it to drain (continuous batching comes with the engine issue). No threads
here: `worker.py` drives `step()`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from model_runtime.config import EngineConfig
from model_runtime.engine.detokenizer import IncrementalDetokenizer
from model_runtime.engine.request import FINISH_REASONS, Request, RequestOutput, RequestStatus
from model_runtime.engine.sampler import sample
from model_runtime.inputs import EncodedItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics; read from any thread."""

    num_running: int
    num_waiting: int
    batch_size: int
    num_kv_tokens: int  # cache columns x rows of the running batch
    last_step_time: float  # time.time() of the last finished step, 0 before the first


class _Batch:
    """The running rows and their cache. Row i of every tensor belongs to requests[i]."""

    def __init__(self, requests: list[Request], cache: DynamicCache, mask: torch.Tensor, next_pos: torch.Tensor):
        self.requests = requests
        self.cache = cache
        self.mask = mask  # [B, L] long, 1 on real tokens
        self.next_pos = next_pos  # [B] long, position of the next token

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.requests = [self.requests[i] for i in rows]
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]


class Engine:
    def __init__(self, model, tokenizer, eos_token_ids: tuple[int, ...], config: EngineConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.config = config or EngineConfig()
        self.device = next(model.parameters()).device
        self.waiting: deque[Request] = deque()
        self.batch: _Batch | None = None
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.generators: dict[str, torch.Generator | None] = {}
        self.last_step_time = 0.0

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        for request in list(self.waiting):
            if request.request_id == request_id:
                self.waiting.remove(request)
                return self._finish(request, RequestStatus.FINISHED_ABORTED, [], "")
        if self.batch is not None:
            for i, request in enumerate(self.batch.requests):
                if request.request_id == request_id:
                    out = self._finish(request, RequestStatus.FINISHED_ABORTED, [], "")
                    self._drop_rows([i])
                    return out
        return None

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    def stats(self) -> EngineStats:
        batch = self.batch
        size = len(batch.requests) if batch else 0
        return EngineStats(
            num_running=size,
            num_waiting=len(self.waiting),
            batch_size=size,
            num_kv_tokens=size * batch.mask.shape[1] if batch else 0,
            last_step_time=self.last_step_time,
        )

    # -- stepping ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        if self.batch is None and self.waiting:
            requests = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.config.max_num_seqs))]
            try:
                logits = self._prefill(requests)
            except Exception:
                log.exception("prefill failed for %s", [r.request_id for r in requests])
                self.batch = None
                outputs = [self._finish(r, RequestStatus.FINISHED_ERROR, [], "") for r in requests]
                self.last_step_time = time.time()
                return outputs
        elif self.batch is not None:
            try:
                logits = self._decode()
            except Exception:
                log.exception("decode failed for %s", [r.request_id for r in self.batch.requests])
                outputs = [self._finish(r, RequestStatus.FINISHED_ERROR, [], "") for r in self.batch.requests]
                self.batch = None
                self.last_step_time = time.time()
                return outputs
        else:
            return []
        outputs = self._append_tokens(logits)
        self.last_step_time = time.time()
        return outputs

    def _prefill(self, requests: list[Request]) -> torch.Tensor:
        items = self._encode_media(requests)
        embeds, mask, positions = self.model.prepare_inputs_for_multimodal(
            [r.prompt.token_ids for r in requests], items, padding_side="left"
        )
        # embeds: [B, L, D]; mask, positions: [B, L]
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        )
        for r in requests:
            r.status = RequestStatus.RUNNING
            self.detokenizers[r.request_id] = IncrementalDetokenizer(self.tokenizer)
            self.generators[r.request_id] = self._generator(r)
        self.batch = _Batch(requests, cache, mask, mask.sum(dim=1))
        return out.logits[:, -1].float()  # [B, V]

    def _decode(self) -> torch.Tensor:
        batch = self.batch
        last = torch.tensor([r.output_ids[-1] for r in batch.requests], dtype=torch.long, device=self.device)
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=last[:, None], attention_mask=batch.mask, position_ids=batch.next_pos[:, None],
            cache=batch.cache, use_cache=True,
        )
        batch.next_pos = batch.next_pos + 1
        return out.logits[:, -1].float()

    def _encode_media(self, requests: list[Request]) -> list[list[EncodedItem]]:
        encoded = iter(self.model.encode_media([m for r in requests for m in r.media]))
        return [[next(encoded) for _ in r.media] for r in requests]

    def _append_tokens(self, logits: torch.Tensor) -> list[RequestOutput]:
        batch = self.batch
        tokens = sample(
            logits, [r.params for r in batch.requests], [self.generators[r.request_id] for r in batch.requests]
        )
        outputs, finished_rows = [], []
        now = time.monotonic()
        for i, (request, token) in enumerate(zip(batch.requests, tokens, strict=True)):
            request.output_ids.append(token)
            if request.first_token_time is None:
                request.first_token_time = now
            status = self._check_stop(request, token)
            is_stop_token = status is RequestStatus.FINISHED_STOPPED
            text = self.detokenizers[request.request_id].push([] if is_stop_token else [token])
            if status is None:
                outputs.append(self._output(request, [token], text))
            else:
                outputs.append(self._finish(request, status, [token], text))
                finished_rows.append(i)
        self._drop_rows(finished_rows)
        return outputs

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _drop_rows(self, rows: list[int]) -> None:
        if not rows or self.batch is None:
            return
        keep = [i for i in range(len(self.batch.requests)) if i not in set(rows)]
        if keep:
            self.batch.keep(keep)
        else:
            self.batch = None

    def _generator(self, request: Request) -> torch.Generator | None:
        if request.params.is_greedy:
            return None
        gen = torch.Generator(device=self.device)
        seed = request.params.seed
        gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        return gen

    def _output(self, request: Request, ids: list[int], text: str) -> RequestOutput:
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=ids,
            text=text,
            finished=request.status.is_finished,
            finish_reason=FINISH_REASONS.get(request.status),
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
        )

    def _finish(self, request: Request, status: RequestStatus, ids: list[int], text: str) -> RequestOutput:
        request.status = status
        self.detokenizers.pop(request.request_id, None)
        self.generators.pop(request.request_id, None)
        return self._output(request, ids, text)
