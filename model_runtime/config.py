"""Checkpoint and runtime configuration.

`LlavaConfig` parses a LLaVA checkpoint's config.json once (ORIG key names, ORIG inference
defaults) and validates it; everything downstream reads this object, never the raw dict.
`EngineConfig` holds the runtime knobs of the generation engine. Neither reads the environment:
only `server/config.py` does.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# NOTE: OneVision configs say model_type "llava", which transformers maps to its own unrelated
# LLaVA class; the language model is therefore chosen from `architectures`, then `model_type`.
LANGUAGE_BY_ARCHITECTURE = {
    "LlavaQwenForCausalLM": "qwen2",
    "LlavaQwen2ForCausalLM": "qwen2",
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
}
LANGUAGE_BY_MODEL_TYPE = {
    "llava_qwen": "qwen2",
    "qwen2": "qwen2",
    "llava_llama": "llama",
    "llama": "llama",
    "llava_mistral": "mistral",
    "mistral": "mistral",
}

# ORIG hard-codes SigLIP-so400m-patch14-384 (llava/model/multimodal_encoder/siglip_encoder.py).
SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
}
# Whisper large-v3's encoder, the tower of EgoGPT and Ola (spec 11); `speech_encoder_config` overrides it.
WHISPER_LARGE_V3 = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "num_mel_bins": 128,
}
WHISPER_MAX_SOURCE_POSITIONS = 1500  # encoder frames of one 30 s chunk (3000 mel frames, conv stride 2)
VALID_PINPOINT_SIDES = (224, 336, 384, 448, 512)
MERGE_TYPES = ("flat", "spatial", "spatial_unpad", "spatial_unpad_nobase", "spatial_maxpool2x2", "spatial_nobase")
NEWLINE_POSITIONS = ("one_token", "no_token", "frame", "grid")
POOL_MODES = ("average", "max", "bilinear")


class ConfigError(ValueError):
    """A checkpoint config that cannot be served; the message names the key and the value."""


@dataclass(frozen=True)
class VisionTowerConfig:
    """Dimensions of the vision tower as published (ORIG drops the last layer at load)."""

    kind: str  # "siglip" | "clip"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int  # layers of the published tower, before ORIG's last-layer drop
    num_attention_heads: int
    image_size: int  # S: side of one crop in pixels
    patch_size: int  # p
    layer_norm_eps: float = 1e-6

    @property
    def num_patches_per_side(self) -> int:  # P
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class AudioTowerConfig:
    """The Whisper encoder + concat-k projector (EgoGPT's `speech_*` keys, spec 11.1 / 11.3)."""

    speech_encoder: str  # the Whisper checkpoint the tower came from (its weights are in this checkpoint)
    hidden_size: int  # Ca: Whisper d_model (`speech_encoder_hidden_size`)
    num_hidden_layers: int  # Whisper encoder_layers
    num_attention_heads: int  # Whisper encoder_attention_heads
    intermediate_size: int  # Whisper encoder_ffn_dim
    num_mel_bins: int = 128
    speech_encoder_type: str = "whisper"
    speech_projector_type: str = "linear"  # EgoGPT's name for the concat-k MLP
    speech_encoder_ds_rate: int = 5  # k: encoder frames concatenated into one LM token
    speech_projector_hidden_size: int = 2048  # EgoGPT hard-codes 2048
    speech_trim_padding: bool = False  # keep only the rows of real audio in the last chunk (llava-serve)

    def __post_init__(self) -> None:
        if self.speech_encoder_type != "whisper":
            raise ConfigError(f"speech_encoder_type={self.speech_encoder_type!r}: only 'whisper' is supported")
        if self.speech_projector_type != "linear":
            raise ConfigError(
                f"speech_projector_type={self.speech_projector_type!r}: only 'linear' (concat-k MLP) is supported"
            )
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "num_mel_bins", "speech_encoder_ds_rate", "speech_projector_hidden_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"audio tower {name}={getattr(self, name)!r}: must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"speech encoder d_model={self.hidden_size} is not a multiple of its "
                f"{self.num_attention_heads} attention heads"
            )


@dataclass(frozen=True)
class LlavaConfig:
    """Every multimodal key ORIG reads, with ORIG's inference defaults (spec section 2)."""

    language: str  # "qwen2" | "llama" | "mistral"
    hidden_size: int  # D
    vision: VisionTowerConfig
    mm_vision_tower: str
    mm_hidden_size: int  # Cv
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()  # (w, h) pixel pairs, config order
    mm_patch_merge_type: str = "flat"
    mm_newline_position: str = "one_token"
    mm_spatial_pool_mode: str = "bilinear"
    mm_spatial_pool_stride: int | None = None
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = True
    tokenizer_model_max_length: int | None = None
    tokenizer_padding_side: str = "right"
    add_faster_video: bool = False
    faster_token_stride: int = 10
    frames_upbound: int = 0
    force_sample: bool = False
    add_time_instruction: bool = False
    video_fps: float = 1.0  # frames sampled per second of video before the frames_upbound cap
    max_position_embeddings: int | None = None
    conversation_template: str | None = None  # llava-serve key: a template name of spec 8
    audio: AudioTowerConfig | None = None  # None: no audio tower (no `speech_encoder` key)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mm_patch_merge_type not in MERGE_TYPES:
            raise ConfigError(f"mm_patch_merge_type={self.mm_patch_merge_type!r}: expected one of {MERGE_TYPES}")
        if self.mm_newline_position not in NEWLINE_POSITIONS:
            raise ConfigError(
                f"mm_newline_position={self.mm_newline_position!r}: expected one of {NEWLINE_POSITIONS}"
            )
        if self.mm_spatial_pool_mode not in POOL_MODES:
            raise ConfigError(f"mm_spatial_pool_mode={self.mm_spatial_pool_mode!r}: expected one of {POOL_MODES}")
        if self.is_anyres and not self.image_grid_pinpoints:
            raise ConfigError(f"image_aspect_ratio={self.image_aspect_ratio!r} needs image_grid_pinpoints")
        if self.anyres_max is not None and self.anyres_max < 1:
            raise ConfigError(f"image_aspect_ratio={self.image_aspect_ratio!r}: N must be >= 1")
        if not self.video_fps > 0:
            raise ConfigError(f"video_fps={self.video_fps!r}: must be > 0")
        if self.frames_upbound < 0:
            raise ConfigError(f"frames_upbound={self.frames_upbound!r}: must be >= 0")

    # -- derived layout facts (pure functions of the keys above) --
    @property
    def is_anyres(self) -> bool:
        return self.image_aspect_ratio == "anyres" or "anyres_max" in self.image_aspect_ratio

    @property
    def anyres_max(self) -> int | None:
        m = re.match(r"anyres_max_(\d+)$", self.image_aspect_ratio)
        return int(m.group(1)) if m else None

    @property
    def has_image_newline(self) -> bool:
        return "unpad" in self.mm_patch_merge_type

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LlavaConfig:
        tower = raw.get("mm_vision_tower") or raw.get("vision_tower")
        if not tower:
            raise ConfigError("mm_vision_tower is missing: not a LLaVA multimodal checkpoint")
        vision = _vision_tower_config(str(tower), raw)
        kwargs: dict[str, Any] = {
            "language": _language(raw),
            "hidden_size": int(raw["hidden_size"]),
            "vision": vision,
            "mm_vision_tower": str(tower),
            "mm_hidden_size": int(raw.get("mm_hidden_size", vision.hidden_size)),
            "image_grid_pinpoints": parse_pinpoints(raw.get("image_grid_pinpoints"), vision.image_size),
            "audio": _audio_tower_config(raw),
            "raw": dict(raw),
        }
        if kwargs["mm_hidden_size"] != vision.hidden_size:
            raise ConfigError(
                f"mm_hidden_size={kwargs['mm_hidden_size']} differs from the vision tower's hidden size "
                f"{vision.hidden_size}"
            )
        plain = {f.name for f in fields(cls)} - set(kwargs)
        for name in plain:
            if name in raw and raw[name] is not None:
                kwargs[name] = raw[name]
        if raw.get("image_aspect_ratio") is None:
            kwargs.pop("image_aspect_ratio", None)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlavaConfig:
        return cls.from_dict(read_config_dict(path))


def read_config_dict(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "config.json"
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"no config.json in {path}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not valid JSON: {e.msg} at line {e.lineno}") from e
    if "auto_map" in raw:
        raise ConfigError(f"{file} has auto_map (remote code); llava-serve never runs checkpoint code")
    return raw


def _language(raw: dict[str, Any]) -> str:
    for arch in raw.get("architectures") or ():
        if arch in LANGUAGE_BY_ARCHITECTURE:
            return LANGUAGE_BY_ARCHITECTURE[arch]
    model_type = raw.get("model_type")
    if model_type in LANGUAGE_BY_MODEL_TYPE:
        return LANGUAGE_BY_MODEL_TYPE[model_type]
    raise ConfigError(
        f"cannot tell the language model: architectures={raw.get('architectures')!r}, "
        f"model_type={model_type!r}"
    )


def _vision_tower_config(tower: str, raw: dict[str, Any]) -> VisionTowerConfig:
    # `mm_vision_tower_config` is a llava-serve extension: ORIG hard-codes the tower dimensions,
    # our demo checkpoints (and any non-so400m tower) state them explicitly.
    explicit = raw.get("mm_vision_tower_config") or {}
    kind = explicit.get("kind") or ("siglip" if "siglip" in tower.lower() else "clip")
    if kind == "siglip":
        dims = {**SIGLIP_SO400M, **{k: v for k, v in explicit.items() if k != "kind"}}
    else:
        if not explicit:
            raise ConfigError(f"vision tower {tower!r}: CLIP towers need mm_vision_tower_config (model-core issue)")
        dims = {k: v for k, v in explicit.items() if k != "kind"}
    try:
        return VisionTowerConfig(kind=kind, **dims)
    except TypeError as e:
        raise ConfigError(f"mm_vision_tower_config: {e}") from e


def _audio_tower_config(raw: dict[str, Any]) -> AudioTowerConfig | None:
    """EgoGPT keys (`speech_encoder`, `speech_encoder_type`, `speech_projector_type`,
    `speech_encoder_ds_rate`, `speech_encoder_hidden_size`) plus llava-serve's `speech_encoder_config`
    (Whisper config keys; default large-v3), `speech_projector_hidden_size`, `speech_trim_padding`."""
    encoder = raw.get("speech_encoder")
    if not encoder:
        return None
    explicit = raw.get("speech_encoder_config") or {}
    if not isinstance(explicit, dict):
        raise ConfigError(f"speech_encoder_config={explicit!r}: expected an object of Whisper config keys")
    unknown = set(explicit) - set(WHISPER_LARGE_V3) - {"max_source_positions"}
    if unknown:
        raise ConfigError(f"speech_encoder_config: unknown keys {sorted(unknown)}; known {sorted(WHISPER_LARGE_V3)}")
    if explicit.get("max_source_positions", WHISPER_MAX_SOURCE_POSITIONS) != WHISPER_MAX_SOURCE_POSITIONS:
        raise ConfigError(
            f"speech_encoder_config.max_source_positions={explicit['max_source_positions']}: the audio front end "
            f"feeds 30 s chunks, i.e. {WHISPER_MAX_SOURCE_POSITIONS} encoder positions"
        )
    dims = {**WHISPER_LARGE_V3, **{k: v for k, v in explicit.items() if k in WHISPER_LARGE_V3}}
    stated = raw.get("speech_encoder_hidden_size")
    if stated is not None and int(stated) != int(dims["d_model"]):
        raise ConfigError(
            f"speech_encoder_hidden_size={stated} differs from the speech encoder's d_model {dims['d_model']}"
        )
    optional = {
        key: raw[key]
        for key in ("speech_encoder_type", "speech_projector_type", "speech_encoder_ds_rate",
                    "speech_projector_hidden_size", "speech_trim_padding")
        if raw.get(key) is not None
    }
    try:
        return AudioTowerConfig(
            speech_encoder=str(encoder),
            hidden_size=int(dims["d_model"]),
            num_hidden_layers=int(dims["encoder_layers"]),
            num_attention_heads=int(dims["encoder_attention_heads"]),
            intermediate_size=int(dims["encoder_ffn_dim"]),
            num_mel_bins=int(dims["num_mel_bins"]),
            **optional,
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"audio tower keys: {e}") from e


def parse_pinpoints(value: Any, image_size: int) -> tuple[tuple[int, int], ...]:
    """ORIG pinpoints: a list of [w, h], or range syntax "(1x1),...,(6x6)" scaled by S."""
    if value is None:
        return ()
    if isinstance(value, str):
        if "x" in value:
            if image_size not in VALID_PINPOINT_SIDES:
                raise ConfigError(
                    f"image_grid_pinpoints range syntax needs a tower image size in {VALID_PINPOINT_SIDES}, "
                    f"got {image_size}"
                )
            groups = re.findall(r"\((\d+)x(\d+)\)", value)
            if not groups:
                raise ConfigError(f"image_grid_pinpoints={value!r}: no (AxB) groups")
            (a0, b0), (a1, b1) = map(int, groups[0]), map(int, groups[-1])
            return tuple(
                (i * image_size, j * image_size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)
            )
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"image_grid_pinpoints={value!r} is not a list literal") from e
    try:
        pairs = tuple((int(w), int(h)) for w, h in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"image_grid_pinpoints={value!r}: expected [[w, h], ...]") from e
    if not pairs or any(w <= 0 or h <= 0 for w, h in pairs):
        raise ConfigError(f"image_grid_pinpoints={value!r}: expected positive [w, h] pairs")
    return pairs


@dataclass(frozen=True)
class FaultInjection:
    """TESTS ONLY: make the engine's LM forward fail on purpose (fault-isolation tests).

    The fault is raised inside the model (before its last decoder layer), so earlier layers have
    already written to the KV cache, as a real mid-forward failure would.
    """

    poison_request_ids: frozenset[str] = frozenset()  # a forward whose batch holds one of these raises
    poison_phases: frozenset[str] = frozenset({"prefill", "decode"})  # where the poison acts
    oom_over_rows: int | None = None  # a forward over more rows than this raises torch.OutOfMemoryError
    fatal_at_step: int | None = None  # the forward of this engine step (from 1) raises a fatal device error


@dataclass(frozen=True)
class EngineConfig:
    """Runtime knobs of the generation engine (not part of the checkpoint)."""

    max_num_seqs: int = 32  # rows in one running batch (each of a request's n choices is a row)
    max_model_len: int | None = None  # None: the checkpoint's context length
    seed: int = 0  # seeds the choice of seeds for requests that give none
    max_prefill_tokens: int = 8192  # padded prompt tokens (rows x longest) prefilled in one step
    encoder_cache_bytes: int = 512 * 2**20  # encoded media kept for reuse (LRU); 0 disables it
    fault_injection: FaultInjection | None = None  # tests only

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len={self.max_model_len}: must be >= 16")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens={self.max_prefill_tokens}: must be >= 1")
        if self.encoder_cache_bytes < 0:
            raise ValueError(f"encoder_cache_bytes={self.encoder_cache_bytes}: must be >= 0")
