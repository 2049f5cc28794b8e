"""Concrete LLaVA causal LMs: transformers language models with the LLaVA meta mixins.

As in ORIG (llava/model/language_model/llava_qwen.py) the classes subclass transformers' causal
LMs so parameter names match ORIG checkpoints (`model.layers.*`, `lm_head.weight`,
`model.mm_projector.*`, `model.vision_tower.*`, `model.image_newline`). The config class carries
the checkpoint's `mm_*` keys as plain attributes; `LlavaConfig` parses them.
"""

from __future__ import annotations

from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from model_runtime.arch.meta import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwenConfig(Qwen2Config):
    model_type = "llava_qwen"

    def __init__(self, **kwargs) -> None:
        kwargs.pop("rope_scaling", None)  # ORIG's Qwen wrapper forces rope_scaling=None
        super().__init__(**kwargs)


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig


class LlavaQwenForCausalLM(Qwen2ForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaQwenConfig
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\.vision_tower\.vision_model\.head\..*"]

    def __init__(self, config: LlavaQwenConfig) -> None:
        # Skip Qwen2ForCausalLM.__init__: it would build a second, plain Qwen2Model.
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


LANGUAGE_MODELS = {"qwen2": (LlavaQwenConfig, LlavaQwenForCausalLM)}
