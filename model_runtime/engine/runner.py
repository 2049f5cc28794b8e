"""The model runner: media encoding through the encoder cache, LEFT-padded splicing, the LM forward.

`prefill(requests)` encodes the requests' media (cache misses grouped into one `encode_media`
call per modality), splices them with `prepare_inputs_for_multimodal(padding_side="left")` and
runs the LM over a fresh cache; `decode(batch, token_ids)` runs one token for every row. A failed
forward leaves the batch cache as it was before the call, so the engine can retry rows. The
runner never touches scheduler state and knows nothing of sampling or text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from model_runtime.config import EngineConfig, FaultInjection
from model_runtime.engine.encoder_cache import EncoderCache, media_key
from model_runtime.engine.kv import BatchCache, concat
from model_runtime.engine.request import Request
from model_runtime.inputs import EncodedItem, MediaInput

# Messages of accelerator errors after which the device state cannot be trusted.
_FATAL_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "unspecified launch failure",
                  "NCCL error", "HIP error")


class FatalDeviceError(RuntimeError):
    """An unrecoverable accelerator error: the engine cannot continue."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


def is_fatal(error: BaseException) -> bool:
    if isinstance(error, FatalDeviceError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return (isinstance(error, RuntimeError) and not is_out_of_memory(error)
            and any(m in str(error) for m in _FATAL_MARKERS))


@dataclass
class MediaReport:
    """What encoding did for one request."""

    cache_hits: list[bool] = field(default_factory=list)  # per media item, request order
    # modality -> that modality's share of the encoder call that encoded this request's items
    encoder_seconds: dict[str, float] = field(default_factory=dict)


def _modality_shares(items, seconds: float) -> dict[str, float]:
    """An encoder call's time split across modalities in proportion to their feature rows."""
    rows: dict[str, int] = {}
    for m in items:
        rows[m.modality] = rows.get(m.modality, 0) + m.num_tokens
    total = sum(rows.values()) or 1
    return {modality: seconds * n / total for modality, n in rows.items()}


class ModelRunner:
    def __init__(self, model, config: EngineConfig) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.encoder_cache = EncoderCache(config.encoder_cache_bytes)
        self.split_prefill_tokens = config.split_prefill_tokens
        self.forward_seconds = 0.0  # LM forwards, cumulative
        self.encoder_seconds = 0.0  # media encoder calls, cumulative
        self.step_index = 0  # set by the engine; fault injection counts steps with it
        self._faults = config.fault_injection
        self._phase = ""
        self._row_ids: Sequence[str] = ()

    # -- prefill ----------------------------------------------------------------------------
    def prefill(self, requests: Sequence[Request]) -> tuple[torch.Tensor, BatchCache, list[MediaReport]]:
        """Requests' prompts -> logits at each last position [R, V] float32, their cache, media reports."""
        items, reports = self.encode(requests)
        if len(requests) > 1 and self._is_split_prefill(requests):
            parts = [self._prefill_rows([r], [i]) for r, i in zip(requests, items, strict=True)]
            return torch.cat([logits for logits, _ in parts]), concat([batch for _, batch in parts]), reports
        logits, batch = self._prefill_rows(requests, items)
        return logits, batch, reports

    def _is_split_prefill(self, requests: Sequence[Request]) -> bool:
        # NOTE: on the CPU a long prompt's prefill is compute-bound, so batching rows saves nothing,
        # while their padding mask costs SDPA its causal block skipping (1.5-2x the attention work):
        # rows that are all long are prefilled one by one and their caches merged.
        return self.device.type == "cpu" and min(r.prompt.num_tokens for r in requests) >= self.split_prefill_tokens

    def _prefill_rows(self, requests: Sequence[Request], items: Sequence[Sequence[EncodedItem]]):
        embeds, mask, positions = self.model.prepare_inputs_for_multimodal(
            [r.prompt.token_ids for r in requests], items, padding_side="left"
        )
        # embeds: [R, L, D]; mask, positions: [R, L] (positions = cumsum(mask) - 1 on real tokens)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(
            "prefill", [r.request_id for r in requests],
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        )
        return logits, BatchCache(cache, mask)

    def encode(self, requests: Sequence[Request]) -> tuple[list[list[EncodedItem]], list[MediaReport]]:
        """Each request's media items encoded, in request order; all misses in one `encode_media` call."""
        cache = self.encoder_cache
        keys = [[media_key(m) for m in r.media] for r in requests]
        found: dict[str, EncodedItem] = {}
        missing: dict[str, MediaInput] = {}
        reports = [MediaReport() for _ in requests]
        for request, request_keys, report in zip(requests, keys, reports, strict=True):
            for item, key in zip(request.media, request_keys, strict=True):
                hit = cache.get(key)
                is_hit = hit is not None or key in missing
                if hit is not None:
                    found[key] = hit
                elif key in missing:
                    cache.count_hit()
                else:
                    missing[key] = item
                report.cache_hits.append(is_hit)
        if missing:
            start = time.perf_counter()
            encoded = self.model.encode_media(list(missing.values()))  # one call: the model batches towers
            seconds = self._elapsed(start)
            self.encoder_seconds += seconds
            for key, item in zip(missing, encoded, strict=True):
                found[key] = item
                cache.put(key, item)
            shares = _modality_shares(missing.values(), seconds)
            for request_keys, report in zip(keys, reports, strict=True):
                for key in request_keys:
                    if key in missing:
                        report.encoder_seconds[missing[key].modality] = shares[missing[key].modality]
        return [[found[k] for k in request_keys] for request_keys in keys], reports

    # -- decode -----------------------------------------------------------------------------
    def decode(self, batch: BatchCache, token_ids: Sequence[int], row_ids: Sequence[str]) -> torch.Tensor:
        """One new token per row -> next-token logits [B, V] float32; on failure `batch` is unchanged."""
        num_columns = batch.num_columns
        positions = batch.next_positions()  # [B, 1]
        batch.append_column()
        input_ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)[:, None]  # [B, 1]
        try:
            return self._forward(
                "decode", row_ids,
                input_ids=input_ids, attention_mask=batch.mask, position_ids=positions, cache=batch.cache,
                use_cache=True,
            )
        except BaseException:
            batch.restore(num_columns)
            raise

    # -- internals --------------------------------------------------------------------------
    def _forward(self, phase: str, row_ids: Sequence[str], **inputs) -> torch.Tensor:
        self._phase, self._row_ids = phase, row_ids
        # NOTE: the fault hook lives only for this call: the model may be shared with other engines
        hook = self.model.model.layers[-1].register_forward_pre_hook(self._inject_fault) if self._faults else None
        start = time.perf_counter()
        try:
            out = self.model(**inputs)
            logits = out.logits[:, -1].float()  # [B, V]
        finally:
            self.forward_seconds += self._elapsed(start)
            self._phase, self._row_ids = "", ()
            if hook is not None:
                hook.remove()
        return logits

    def _elapsed(self, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _inject_fault(self, module, args) -> None:
        faults: FaultInjection = self._faults
        if faults.fatal_at_step is not None and self.step_index == faults.fatal_at_step:
            raise FatalDeviceError("CUDA error: injected fatal device error")
        if faults.oom_over_rows is not None and len(self._row_ids) > faults.oom_over_rows:
            raise torch.OutOfMemoryError(f"injected out of memory for {len(self._row_ids)} rows")
        if self._phase in faults.poison_phases and faults.poison_request_ids.intersection(self._row_ids):
            raise RuntimeError("injected fault for a poisoned request")
