"""What the engine needs of a model: `ServedModel`, the members the engine, its runner and its KV
cache read, and nothing else.

The LLaVA causal LMs (arch/language.py, through `LlavaMetaForCausalLM` in arch/meta.py) provide
them; `served_model()` checks a loaded model is one and gives it this type, so a type checker and a
reader follow every use of the model past the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from model_runtime.arch.encoding import EncodingJob
from model_runtime.arch.meta import LlavaMetaForCausalLM
from model_runtime.config import LlavaConfig
from model_runtime.inputs import EncodedItem, MediaInput


class ServedModel(Protocol):
    @property
    def text_config(self) -> Any: ...  # the language model's transformers config

    @property
    def llava_config(self) -> LlavaConfig: ...

    @property
    def compute_device(self) -> torch.device: ...

    @property
    def compute_dtype(self) -> torch.dtype: ...

    @property
    def logits_size(self) -> int: ...

    @property
    def decoder_layers(self) -> Sequence[nn.Module]: ...

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor: ...

    def rotary_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def start_encoding(self, item: MediaInput, max_crops: int) -> EncodingJob: ...

    def prepare_inputs_for_multimodal(
        self, rows: Sequence[Sequence[int]], items: Sequence[Sequence[EncodedItem | MediaInput]],
        padding_side: str = "left", spans: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def served_model(model: object) -> ServedModel:
    """`model` as the engine sees it; a TypeError if it is not a LLaVA causal LM."""
    if not isinstance(model, LlavaMetaForCausalLM):
        raise TypeError(f"the engine serves LLaVA causal LMs, not {type(model).__name__}")
    return model
