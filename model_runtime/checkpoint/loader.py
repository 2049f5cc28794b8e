"""load_pretrained_model: a LLaVA checkpoint folder (or hub id) -> tokenizer, model, processor.

Branches are chosen from config.json and the files present, never from the model's name
(spec 9.1, 13). Safetensors only; `auto_map` configs refused; `trust_remote_code` never set.
This skeleton loads full checkpoints; LoRA, projector-only, deltas and quantization come with the
checkpoint-tools issue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from model_runtime.arch.audio import OPENAI_WHISPER_KEY_MAPPING
from model_runtime.arch.language import LANGUAGE_MODELS
from model_runtime.config import ConfigError, LlavaConfig, read_config_dict
from model_runtime.processing.conversation import template_for
from model_runtime.processing.processor import Processor

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """What a server needs from a checkpoint."""

    tokenizer: object  # a transformers tokenizer
    model: torch.nn.Module  # Llava*ForCausalLM in eval mode
    config: LlavaConfig
    processor: Processor
    context_len: int  # max prompt + output tokens
    dtype: torch.dtype
    is_demo: bool  # random demo weights (llava-serve make-demo)
    eos_token_ids: tuple[int, ...]


def resolve_dtype(name: str, raw_config: dict) -> torch.dtype:
    if name == "auto":
        name = str(raw_config.get("torch_dtype") or raw_config.get("dtype") or "float32")
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_checkpoint(model_path: str) -> Path:
    """A local folder, or a hub id fetched with the standard transformers cache."""
    path = Path(model_path)
    if path.is_dir():
        return path
    if path.exists() or model_path.startswith((".", "/")):
        raise ConfigError(f"{model_path} is not a checkpoint folder")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def load_pretrained_model(model_path: str, dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    path = resolve_checkpoint(model_path)
    raw = read_config_dict(path)
    cfg = LlavaConfig.from_dict(raw)
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ConfigError(
                f"{path} holds only pickled weights (.bin/.pt); convert them once with "
                f"`llava-serve convert-bin {path} DST` and serve DST"
            )
        raise ConfigError(f"{path} holds no .safetensors weights")
    config_cls, model_cls = LANGUAGE_MODELS.get(cfg.language, (None, None))
    if model_cls is None:
        raise ConfigError(f"language model {cfg.language!r} is not supported yet")
    torch_dtype = resolve_dtype(dtype, raw)
    hf_config = config_cls(**{k: v for k, v in raw.items() if k != "model_type"})
    model = model_cls.from_pretrained(
        path, config=hf_config, dtype=torch_dtype, device_map=device, attn_implementation="sdpa",
        # EgoGPT/Ola store the Whisper encoder under openai-whisper names
        key_mapping=OPENAI_WHISPER_KEY_MAPPING if cfg.audio is not None else None,
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, config=hf_config)
    template = template_for(cfg.language, cfg.conversation_template, tokenizer)
    context_len = int(
        raw.get("max_sequence_length")
        or raw.get("max_position_embeddings")
        or raw.get("tokenizer_model_max_length")
        or 2048
    )
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos |= _generation_eos(path)
    return LoadedModel(
        tokenizer=tokenizer,
        model=model,
        config=cfg,
        processor=Processor(cfg, tokenizer, template),
        context_len=context_len,
        dtype=torch_dtype,
        is_demo="llava_serve_demo" in raw,
        eos_token_ids=tuple(sorted(eos)),
    )


def _generation_eos(path: Path) -> set[int]:
    import json

    file = path / "generation_config.json"
    if not file.exists():
        return set()
    value = json.loads(file.read_text()).get("eos_token_id")
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {int(value)}
