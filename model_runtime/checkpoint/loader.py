"""load_pretrained_model: a LLaVA checkpoint (folder or hub id) -> tokenizer, model, processor.

The branch comes from config.json and the files present, never from the model's name (spec 9.1,
13): a full checkpoint; a LoRA adapter folder on top of `model_base` (merged at load with peft);
a projector-only folder on top of `model_base`. Precision float32/bfloat16/float16/auto, optional
bitsandbytes 8-bit/4-bit (decoder layers only), any `device_map`. Safetensors only; `auto_map`
configs refused; `trust_remote_code` never set; no weight is ever left at its random init. It does
not know HTTP, and it does not convert anything on disk (the checkpoint tools do).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from model_runtime.arch.attention import ATTN_IMPLEMENTATION
from model_runtime.arch.audio import OPENAI_WHISPER_KEY_MAPPING
from model_runtime.arch.language import LANGUAGE_MODELS
from model_runtime.checkpoint.folder import DELTA_KEY, CheckpointFiles, inspect_checkpoint, resolve_checkpoint
from model_runtime.checkpoint.hf_layout import (
    HF_BEHAVIOURS,
    HF_KEY_MAPPING,
    is_llava_hf,
    read_preprocessor_config,
)
from model_runtime.checkpoint.hf_layout import orig_config as hf_orig_config
from model_runtime.checkpoint.lora import merge_adapter, read_non_lora_trainables
from model_runtime.checkpoint.precision import DtypeChoice, choose_dtype, detect_capabilities, device_kind
from model_runtime.checkpoint.quantize import (
    QUANTIZATIONS,
    bitsandbytes_config,
    cpu_slowdown,
    default_compute_dtype,
)
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.checkpoint.tensors import load_tensors
from model_runtime.checkpoint.tokens import add_special_tokens
from model_runtime.checkpoint.tower_source import fill_vision_tower
from model_runtime.config import ConfigError, LlavaConfig, read_config_dict
from model_runtime.processing.chat_template import CheckpointChatTemplate, read_chat_template
from model_runtime.processing.conversation import ConversationTemplate, template_for
from model_runtime.processing.processor import Processor

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dimensions a base must share with the checkpoint that was trained on it.
BASE_DIMENSIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    """What a server needs from a checkpoint."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel  # Llava*ForCausalLM in eval mode
    config: LlavaConfig
    processor: Processor
    context_len: int  # max prompt + output tokens
    dtype: torch.dtype  # dtype of the unquantized weights and of the computation
    is_demo: bool  # random demo weights (llava-serve make-demo)
    eos_token_ids: tuple[int, ...]
    quantization: str = "none"  # one of quantize.QUANTIZATIONS
    kind: str = "full"  # "full" | "lora" | "projector": how the checkpoint was assembled
    dtype_reason: str = ""  # why `dtype` was chosen (precision.DtypeChoice.reason), for the log and /version
    device_kind: str = "cpu"  # "cpu" | "cuda" | ...: where the language model computes
    quantization_slowdown: str | None = None  # why `quantization` is slower than float32 here (quantize.py)


def resolve_dtype(name: str, raw_config: dict, quantization: str = "none", device_kind: str = "cpu",
                  capabilities: frozenset[str] = frozenset()) -> DtypeChoice:
    """`--dtype` (auto or a name) for a checkpoint whose config.json is `raw_config`, on a device of
    `device_kind` with `capabilities` (precision.detect_capabilities)."""
    if name == "auto":
        stored = str(raw_config.get("torch_dtype") or raw_config.get("dtype") or "float32")
        hardware = choose_dtype(DTYPES.get(stored, torch.float32), device_kind, capabilities)
        if quantization != "none":
            return default_compute_dtype(quantization, device_kind, hardware)
        return hardware
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected auto, {', '.join(DTYPES)}")
    return DtypeChoice(DTYPES[name], f"--dtype {name}")


@dataclass(frozen=True)
class _Source:
    """A checkpoint's files and the config it is built from."""

    files: CheckpointFiles
    base: Path | None  # the model under a LoRA or projector-only checkpoint
    raw: dict[str, Any]  # config.json in ORIG's layout (a llava-hf config translated)
    hf_layout: bool

    @property
    def weights_path(self) -> Path:
        return self.files.path if self.files.kind == "full" or self.base is None else self.base


def load_pretrained_model(
    model_path: str | Path,
    model_base: str | Path | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    device_map: str | dict | None = None,
    quantization: str = "none",
    hf_behaviour: str = "original",
) -> LoadedModel:
    """`device_map` (e.g. "auto", "cuda:1" or a module -> device dict) wins over `device`.
    `hf_behaviour` (llava-hf checkpoints only): "original" serves ORIG's behaviour where transformers
    differs; "transformers" serves transformers' (the checkpoint's chat template, its unpad rounding
    and image layouts; docs/CHECKPOINTS.md section 8)."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r}: expected one of {QUANTIZATIONS}")
    if hf_behaviour not in HF_BEHAVIOURS:
        raise ConfigError(f"hf_behaviour={hf_behaviour!r}: expected one of {', '.join(HF_BEHAVIOURS)}")
    source = _read_source(model_path, model_base, hf_behaviour)
    files, base, raw = source.files, source.base, source.raw
    cfg = LlavaConfig.from_dict(raw)
    if base is not None:
        check_compatible_base(raw, read_config_dict(base), base)
    if cfg.language not in LANGUAGE_MODELS:
        raise ConfigError(f"language model {cfg.language!r} is not supported (have {sorted(LANGUAGE_MODELS)})")
    config_cls, model_cls = LANGUAGE_MODELS[cfg.language]
    kind = device_kind(device, device_map)
    capabilities = detect_capabilities(kind)
    choice = resolve_dtype(dtype, raw, quantization, kind, capabilities)
    hf_config = config_cls(**{k: v for k, v in raw.items() if k != "model_type"})
    model = _load_weights(source, cfg, model_cls, hf_config, choice.dtype,
                          device_map if device_map is not None else device, quantization)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(files.path, base), config=hf_config)
    add_special_tokens(tokenizer, model, cfg)
    model.eval()
    template: ConversationTemplate | CheckpointChatTemplate
    if hf_behaviour == "transformers":
        template = read_chat_template(files.path, tokenizer)
    else:
        template = template_for(cfg.language, cfg.conversation_template, tokenizer)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos |= _generation_eos(files.path) or (_generation_eos(base) if base is not None else set())
    log.info("loaded %s checkpoint %s%s (%s, quantization %s)", files.kind, files.path,
             f" on base {base}" if base else "", str(choice.dtype).removeprefix("torch."), quantization)
    return LoadedModel(
        tokenizer=tokenizer,
        model=model,
        config=cfg,
        processor=Processor(cfg, tokenizer, template),
        context_len=context_length(raw),
        dtype=choice.dtype,
        is_demo="llava_serve_demo" in raw,
        eos_token_ids=tuple(sorted(eos)),
        quantization=quantization,
        kind=files.kind,
        dtype_reason=choice.reason,
        device_kind=kind,
        quantization_slowdown=cpu_slowdown(quantization, kind, capabilities),
    )


def _read_source(model_path: str | Path, model_base: str | Path | None, hf_behaviour: str) -> _Source:
    """The checkpoint's files, its base if it needs one, and its config, refused where they do not fit."""
    files = inspect_checkpoint(resolve_checkpoint(model_path))
    base = resolve_checkpoint(model_base) if model_base else None
    if files.kind == "full" and base is not None:
        raise ConfigError(f"{files.path} is a full checkpoint; model_base={model_base} would be ignored: "
                          "drop it (serve: --model-base)")
    if files.kind != "full" and base is None:
        what = "a LoRA adapter" if files.kind == "lora" else "projector weights only"
        raise ConfigError(f"{files.path} holds {what}; pass model_base (serve: --model-base), "
                          "the model it was trained on")
    raw = read_config_dict(files.path if (files.path / "config.json").exists() or base is None else base)
    if DELTA_KEY in raw:
        raise ConfigError(f"{files.path} is a weight delta, not a model: rebuild the model with "
                          f"`llava-serve apply-delta --base BASE --delta {files.path} --out DST`")
    hf_layout = is_llava_hf(raw)
    if hf_layout:
        if files.kind != "full" or base is not None:
            raise ConfigError(f"{files.path}: llava-hf checkpoints load as full checkpoints only (no --model-base)")
        raw = hf_orig_config(raw, read_preprocessor_config(files.path), hf_behaviour)
    elif hf_behaviour != "original":
        raise ConfigError(f"{files.path} is not a llava-hf checkpoint (config.json model_type "
                          f"{raw.get('model_type')!r} without text_config): hf_behaviour={hf_behaviour!r} "
                          "applies to llava-hf checkpoints only")
    return _Source(files, base, raw, hf_layout)


def _load_weights(source: _Source, cfg: LlavaConfig, model_cls: Any, hf_config: Any, dtype: torch.dtype,
                  device_map: str | dict, quantization: str) -> PreTrainedModel:
    """The model with every weight from the checkpoint (its base, its extra tensors, a tower source);
    a LoRA adapter merged in."""
    weights_path = source.weights_path
    model: PreTrainedModel
    info: dict[str, Any]  # missing, unexpected and mismatched keys
    with _transformers_quiet():  # its load report calls the weights we fill below "newly initialized"
        # transformers annotates the return as the model alone; with output_loading_info it is
        # (model, info)
        model, info = model_cls.from_pretrained(
            weights_path,
            config=hf_config,
            dtype=dtype,
            device_map=device_map,
            quantization_config=bitsandbytes_config(quantization, dtype),
            attn_implementation=ATTN_IMPLEMENTATION,
            use_safetensors=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below as a ConfigError
            # EgoGPT/Ola store the Whisper encoder under openai-whisper names; llava-hf, transformers' names
            key_mapping=HF_KEY_MAPPING if source.hf_layout
            else OPENAI_WHISPER_KEY_MAPPING if cfg.audio is not None else None,
        )
    if info["mismatched_keys"]:
        raise ConfigError(f"{weights_path}: tensor shapes differ from what its config describes: "
                          f"{_names(info['mismatched_keys'])}")
    if info["unexpected_keys"]:
        log.warning("%s: tensors this model does not use: %s", weights_path, _names(info["unexpected_keys"]))
    missing = set(info["missing_keys"])
    missing -= load_tensors(model, _extra_tensors(source.files))
    if source.files.kind == "lora":
        model = merge_adapter(model, source.files.path)
    missing -= fill_vision_tower(model, cfg, missing)
    if missing:
        raise ConfigError(f"weights missing from {weights_path} (and every other source): {_names(missing)}")
    return model


def context_length(raw: dict[str, Any]) -> int:
    """ORIG builder.py's fallbacks, in order."""
    return int(
        raw.get("max_sequence_length")
        or raw.get("max_position_embeddings")
        or raw.get("tokenizer_model_max_length")
        or 2048
    )


def check_compatible_base(raw: dict[str, Any], base_raw: dict[str, Any], base: Path) -> None:
    """A LoRA or projector checkpoint must sit on a base with the same language-model dimensions."""
    differing = [
        f"{key}: checkpoint {raw.get(key)} vs base {base_raw.get(key)}"
        for key in BASE_DIMENSIONS
        if key in raw and key in base_raw and raw[key] != base_raw[key]
    ]
    if differing:
        raise ConfigError(f"{base} is not the base this checkpoint was trained on ({'; '.join(differing)})")


def _extra_tensors(files: CheckpointFiles) -> dict[str, torch.Tensor]:
    """Weights that come from the checkpoint folder on top of the base."""
    if files.kind == "projector":
        return {name: t for file in files.weight_files for name, t in SafetensorsFile(file)}
    if files.kind == "lora" and files.non_lora_file is not None:
        return read_non_lora_trainables(files.non_lora_file)
    return {}


def _tokenizer_path(path: Path, base: Path | None) -> Path:
    if base is None or any((path / name).exists() for name in TOKENIZER_FILES):
        return path
    return base


@contextmanager
def _transformers_quiet():
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def _generation_eos(path: Path) -> set[int]:
    file = path / "generation_config.json"
    if not file.exists():
        return set()
    value = json.loads(file.read_text()).get("eos_token_id")
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {int(value)}


def _names(items) -> str:
    names = sorted(str(i[0] if isinstance(i, tuple) else i) for i in items)
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")
