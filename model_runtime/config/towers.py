"""Tower dimensions: the vision tower (SigLIP / CLIP) and the audio tower (Whisper encoder).

ORIG hard-codes or downloads these; we read them from the checkpoint where it states them, from
built-in tables of the published towers otherwise, and from transformers' config loading last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.config.errors import ConfigError

# ORIG hard-codes SigLIP-so400m-patch14-384 (llava/model/multimodal_encoder/siglip_encoder.py).
SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
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
# ORIG reads CLIP dimensions from the hub; these are the published configs of the CLIP towers LLaVA
# checkpoints name, so they load offline. Other names fall back to transformers' config loading.
_CLIP_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}
KNOWN_CLIP_TOWERS = {
    "openai/clip-vit-large-patch14-336": {**_CLIP_L14, "image_size": 336},
    "openai/clip-vit-large-patch14": {**_CLIP_L14, "image_size": 224},
}
DEFAULT_ACT = {"siglip": "gelu_pytorch_tanh", "clip": "quick_gelu"}


@dataclass(frozen=True)
class VisionTowerConfig:
    """Dimensions of the vision tower as published (ORIG drops SigLIP's last layer at load)."""

    kind: str  # "siglip" | "clip"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int  # layers of the published tower, before ORIG's last-layer drop
    num_attention_heads: int
    image_size: int  # S: side of one crop in pixels
    patch_size: int  # p
    hidden_act: str  # vision_tower_config gives the kind's default (gelu_pytorch_tanh / quick_gelu) when unset
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_ACT:
            raise ConfigError(f"mm_vision_tower_config.kind={self.kind!r}: expected one of {sorted(DEFAULT_ACT)}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"vision tower {name}={getattr(self, name)!r}: must be >= 1")

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


def vision_tower_config(tower: str, raw: dict[str, Any]) -> VisionTowerConfig:
    """Tower dimensions without the hub where possible: the explicit `mm_vision_tower_config`
    (a llava-serve extension; demo checkpoints use it), then ORIG's hard-coded SigLIP so400m for
    any name containing "siglip", then the built-in CLIP table, then transformers' config loading
    (a local tower folder, or the hub for names we do not know)."""
    explicit = dict(raw.get("mm_vision_tower_config") or {})
    kind = explicit.pop("kind", None)
    if kind is not None and kind not in DEFAULT_ACT:
        raise ConfigError(f"mm_vision_tower_config.kind={kind!r}: expected one of {sorted(DEFAULT_ACT)}")
    if kind is None and tower in KNOWN_CLIP_TOWERS:
        kind = "clip"
    if kind is None and "siglip" in tower.lower() and not Path(tower).is_dir():
        kind = "siglip"
    if kind == "siglip":
        base = SIGLIP_SO400M
    elif kind == "clip":
        base = KNOWN_CLIP_TOWERS.get(tower, {})
    else:
        kind, base = pretrained_tower_dims(tower)
    try:
        dims = {**base, **explicit}
        return VisionTowerConfig(kind=kind, **{**dims, "hidden_act": dims.get("hidden_act") or DEFAULT_ACT.get(kind, "")})
    except TypeError as e:
        raise ConfigError(f"vision tower {tower!r}: incomplete or unknown dimensions in mm_vision_tower_config ({e})") from e


def pretrained_tower_dims(tower: str) -> tuple[str, dict[str, Any]]:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(tower)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"vision tower {tower!r} is not built in and its config could not be loaded; state its dimensions in "
            "mm_vision_tower_config"
        ) from e
    vision = getattr(config, "vision_config", None) or config
    model_type = str(getattr(vision, "model_type", ""))
    kind = "siglip" if "siglip" in model_type else "clip" if "clip" in model_type else None
    if kind is None:
        raise ConfigError(f"vision tower {tower!r} has model_type {model_type!r}; expected a CLIP or SigLIP tower")
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
             "patch_size", "layer_norm_eps", "hidden_act")
    return kind, {name: getattr(vision, name) for name in names}


def audio_tower_config(raw: dict[str, Any]) -> AudioTowerConfig | None:
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
