"""Concrete LLaVA causal LMs: transformers language models with the LLaVA meta mixins.

As in ORIG (llava/model/language_model/llava_{qwen,llama,mistral}.py) the classes subclass
transformers' causal LMs so parameter names match ORIG checkpoints (`model.layers.*`,
`lm_head.weight`, `model.mm_projector.*`, `model.vision_tower.*`, `model.image_newline`,
`model.faster_token`). The config classes carry the checkpoint's `mm_*` keys as plain attributes;
`LlavaConfig` parses them. The loader picks a class from `LANGUAGE_MODELS[LlavaConfig.language]`.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
)
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.models.mistral.modeling_mistral import MistralPreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from model_runtime.arch.meta import LlavaMetaForCausalLM, LlavaMetaModel

# Checkpoint keys ORIG writes but never uses at inference: SigLIP's pooling head (replaced by
# identity) and the resampler (built, never applied; spec 2.3).
UNUSED_CHECKPOINT_KEYS = [
    r"model\.vision_tower\.vision_tower\.vision_model\.head\..*",
    r"model\.vision_resampler\..*",
]


def _init_causal_lm(
    lm: PreTrainedModel,
    config: PreTrainedConfig,
    pretrained_cls: type[PreTrainedModel],
    base_cls: type[PreTrainedModel],
) -> None:
    # Skip XForCausalLM.__init__: it would build a second, plain base model.
    pretrained_cls.__init__(lm, config)
    lm.model = base_cls(config)
    lm.vocab_size = config.vocab_size
    lm.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    lm.post_init()


# -- Qwen2 (LLaVA-OneVision, LLaVA-Video) -----------------------------------------------------
class LlavaQwenConfig(Qwen2Config):
    model_type = "llava_qwen"

    def __init__(self, **kwargs) -> None:
        kwargs.pop("rope_scaling", None)  # ORIG's Qwen wrapper forces rope_scaling=None
        super().__init__(**kwargs)


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig


class LlavaQwenForCausalLM(Qwen2ForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaQwenConfig
    _keys_to_ignore_on_load_unexpected = UNUSED_CHECKPOINT_KEYS

    def __init__(self, config: LlavaQwenConfig) -> None:
        _init_causal_lm(self, config, Qwen2PreTrainedModel, LlavaQwenModel)


# -- Llama (LLaVA-1.5 / 1.6-vicuna, LLaVA-NeXT-Video); rope_scaling is kept (spec 2.6) -------
class LlavaLlamaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaLlamaConfig


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaLlamaConfig
    _keys_to_ignore_on_load_unexpected = UNUSED_CHECKPOINT_KEYS

    def __init__(self, config: LlavaLlamaConfig) -> None:
        _init_causal_lm(self, config, LlamaPreTrainedModel, LlavaLlamaModel)


# -- Mistral (LLaVA-1.6-mistral) ---------------------------------------------------------------
class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig


class LlavaMistralForCausalLM(MistralForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaMistralConfig
    _keys_to_ignore_on_load_unexpected = UNUSED_CHECKPOINT_KEYS

    def __init__(self, config: LlavaMistralConfig) -> None:
        _init_causal_lm(self, config, MistralPreTrainedModel, LlavaMistralModel)


# LlavaConfig.language -> (config class, model class)
LANGUAGE_MODELS: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "qwen2": (LlavaQwenConfig, LlavaQwenForCausalLM),
    "llama": (LlavaLlamaConfig, LlavaLlamaForCausalLM),
    "mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
}
