"""Checkpoint and runtime configuration.

`LlavaConfig` parses a LLaVA checkpoint's config.json once (ORIG key names, ORIG inference
defaults) and validates it; everything downstream reads this object, never the raw dict.
`EngineConfig` holds the runtime knobs of the generation engine. Neither reads the environment:
only `server/config.py` does.
"""

from __future__ import annotations

import ast
import json
import logging
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
VALID_PINPOINT_SIDES = (224, 336, 384, 448, 512)
MERGE_TYPES = ("flat", "spatial", "spatial_unpad", "spatial_unpad_nobase", "spatial_maxpool2x2", "spatial_nobase")
NEWLINE_POSITIONS = ("one_token", "no_token", "frame", "grid")
POOL_MODES = ("average", "max", "bilinear")
SELECT_FEATURES = (
    "patch", "cls_patch", "slicefour_patch", "slicefour_cls_patch", "slice_m25811_f6_patch", "slice_m25811_f6_cls_patch",
)
SLICE_M25811_F6_LAYERS = (-2, -5, -8, -11, 6)
PROJECTOR_PATTERNS = (r"linear", r"identity", r"pooler", r"mlp[1-9]\d*x_gelu", r"mlp[1-9]\d*x_res\d+x_gelu")
# Built by ORIG but never applied by its inference path (spec 2.3): accepted, ignored.
RESAMPLER_TYPES = (None, "spatial_pool", "masked_drop", "perceiver", "qformer")
PADDING_SIDES = ("left", "right")
VIDEO_POOL_STRIDE = 2  # ORIG HEAD pools videos with stride 2 whatever mm_spatial_pool_stride says

log = logging.getLogger(__name__)
_logged_once: set[str] = set()


def log_once(message: str) -> None:
    """Log a configuration fallback once per process, not once per model construction."""
    if message not in _logged_once:
        _logged_once.add(message)
        log.warning(message)


class ConfigError(ValueError):
    """A checkpoint config that cannot be served; the message names the key and the value."""


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
    layer_norm_eps: float = 1e-6
    hidden_act: str = ""  # "" -> the kind's default (gelu_pytorch_tanh / quick_gelu)

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_ACT:
            raise ConfigError(f"mm_vision_tower_config.kind={self.kind!r}: expected one of {sorted(DEFAULT_ACT)}")
        if not self.hidden_act:
            object.__setattr__(self, "hidden_act", DEFAULT_ACT[self.kind])
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


@dataclass(frozen=True)
class LlavaConfig:
    """Every multimodal key ORIG reads, with ORIG's inference defaults (spec section 2)."""

    language: str  # "qwen2" | "llama" | "mistral"
    hidden_size: int  # D
    vision: VisionTowerConfig
    mm_vision_tower: str
    mm_hidden_size: int = 0  # Cv: width of the selected tower features (x4/x5 for CLIP slice); 0 -> derived
    # 2.1 vision tower
    mm_vision_select_layer: int = -2  # CLIP only: index into hidden_states (0 = embeddings)
    mm_vision_select_feature: str = "patch"  # CLIP only
    # 2.2 projector (2.3 resampler: built by ORIG, never applied)
    mm_projector_type: str = "linear"
    mm_resampler_type: str | None = None
    # 2.4 image layout
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()  # (w, h) pixel pairs, config order
    mm_patch_merge_type: str = "flat"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = True
    # 2.5 video
    mm_newline_position: str = "one_token"
    mm_spatial_pool_mode: str = "bilinear"  # absent: training default, logged once (spec 13)
    mm_spatial_pool_stride: int | None = None  # read only by faster video (slow stride; None -> 2)
    add_faster_video: bool = False
    faster_token_stride: int = 10
    frames_upbound: int = 0
    video_fps: int = 1
    force_sample: bool = False
    add_time_instruction: bool = False
    # 2.6 sequence / LM
    tokenizer_model_max_length: int | None = None  # NOT used to truncate: over-long prompts are refused
    tokenizer_padding_side: str = "right"  # training side; batched generation always pads left
    use_pos_skipping: bool = False  # training mode only
    pos_skipping_range: int = 4096
    rope_scaling: dict[str, Any] | None = None  # kept for Llama/Mistral; ORIG's Qwen wrapper forces None
    max_position_embeddings: int | None = None
    conversation_template: str | None = None  # llava-serve key: a template name of spec 8
    audio: AudioTowerConfig | None = None  # None: no audio tower (no `speech_encoder` key)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_choice("mm_patch_merge_type", self.mm_patch_merge_type, MERGE_TYPES)
        _check_choice("mm_newline_position", self.mm_newline_position, NEWLINE_POSITIONS)
        _check_choice("mm_spatial_pool_mode", self.mm_spatial_pool_mode, POOL_MODES)
        _check_choice("mm_vision_select_feature", self.mm_vision_select_feature, SELECT_FEATURES)
        _check_choice("mm_resampler_type", self.mm_resampler_type, RESAMPLER_TYPES)
        _check_choice("tokenizer_padding_side", self.tokenizer_padding_side, PADDING_SIDES)
        if not any(re.fullmatch(p, self.mm_projector_type) for p in PROJECTOR_PATTERNS):
            raise ConfigError(
                f"mm_projector_type={self.mm_projector_type!r}: expected linear, identity, pooler, mlpNx_gelu "
                "or mlpNx_resMx_gelu"
            )
        aspect = self.image_aspect_ratio
        if aspect not in ("square", "pad", "anyres") and not re.fullmatch(r"anyres_max_[1-9]\d*", aspect):
            raise ConfigError(
                f"image_aspect_ratio={aspect!r}: expected square, pad, anyres or anyres_max_N with N >= 1 "
                "(legacy highres/crop_split are not supported)"
            )
        if self.is_anyres and not self.image_grid_pinpoints:
            raise ConfigError(f"image_aspect_ratio={aspect!r} needs image_grid_pinpoints")
        for name, low in (("faster_token_stride", 1), ("video_fps", 1), ("pos_skipping_range", 0), ("frames_upbound", 0)):
            if int(getattr(self, name)) < low:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be >= {low}")
        if self.mm_spatial_pool_stride is not None and self.mm_spatial_pool_stride < 1:
            raise ConfigError(f"mm_spatial_pool_stride={self.mm_spatial_pool_stride!r}: must be >= 1")
        self._check_feature_width()
        if self.is_anyres and self.mm_patch_merge_type.startswith("spatial") and not self.has_square_patch_map:
            raise ConfigError(
                f"mm_patch_merge_type={self.mm_patch_merge_type!r} with image_aspect_ratio={aspect!r} needs a "
                f"square P x P patch map per crop; mm_projector_type={self.mm_projector_type!r} / "
                f"mm_vision_select_feature={self.mm_vision_select_feature!r} do not give one (ORIG asserts too)"
            )

    def _check_feature_width(self) -> None:
        """mm_hidden_size must be the width of the selected tower features (derived when absent)."""
        width = self.vision.hidden_size
        if self.vision.kind == "clip":
            width *= len(self.clip_feature_layers)
        if not self.mm_hidden_size:
            object.__setattr__(self, "mm_hidden_size", width)
        if self.mm_hidden_size != width:
            raise ConfigError(
                f"mm_hidden_size={self.mm_hidden_size} differs from the width of the selected vision features "
                f"({width}: tower hidden size {self.vision.hidden_size}, mm_vision_select_feature="
                f"{self.mm_vision_select_feature!r})"
            )
        if self.mm_projector_type == "identity" and width != self.hidden_size:
            raise ConfigError(
                f"mm_projector_type='identity' needs mm_hidden_size == hidden_size, got {width} != {self.hidden_size}"
            )

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

    @property
    def has_cls_token(self) -> bool:
        """CLIP keeps its CLS token in front of the patch tokens (`*cls_patch` select features)."""
        return self.vision.kind == "clip" and self.mm_vision_select_feature.endswith("cls_patch")

    @property
    def has_square_patch_map(self) -> bool:
        """Each crop becomes a P x P map of rows (what spatial merges and video pooling need)."""
        return not self.has_cls_token and self.mm_projector_type != "pooler"

    @property
    def is_faster_video(self) -> bool:
        """SlowFast video (spec 4.4): ORIG reads add_faster_video only in a spatial merge with grid newlines."""
        return (
            self.add_faster_video and self.mm_newline_position == "grid" and self.mm_patch_merge_type.startswith("spatial")
        )

    @property
    def clip_feature_layers(self) -> tuple[int, ...]:
        """Indices into CLIP's hidden_states (length L = layers + 1) concatenated on channels (ORIG
        clip_encoder.feature_select)."""
        num_states = self.vision.num_hidden_layers + 1
        feature = self.mm_vision_select_feature
        if feature.startswith("slicefour_"):
            every = num_states // 4
            layers = tuple(range(every + self.mm_vision_select_layer, num_states, every)) if every else ()
        elif feature.startswith("slice_m25811_f6_"):
            layers = SLICE_M25811_F6_LAYERS
        else:
            layers = (self.mm_vision_select_layer,)
        if not layers or any(not -num_states <= i < num_states for i in layers):
            raise ConfigError(
                f"mm_vision_select_layer={self.mm_vision_select_layer} / mm_vision_select_feature={feature!r} select "
                f"layers {list(layers)} outside the tower's {num_states} hidden states"
            )
        return layers

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LlavaConfig:
        tower = raw.get("mm_vision_tower") or raw.get("vision_tower")
        if not tower:
            raise ConfigError("mm_vision_tower is missing: not a LLaVA multimodal checkpoint")
        if raw.get("s2"):
            raise ConfigError("s2=true (CLIP-S2 multi-scale tower) is not supported")
        vision = _vision_tower_config(str(tower), raw)
        language = _language(raw)
        kwargs: dict[str, Any] = {
            "language": language,
            "hidden_size": int(raw["hidden_size"]),
            "vision": vision,
            "mm_vision_tower": str(tower),
            "image_grid_pinpoints": parse_pinpoints(raw.get("image_grid_pinpoints"), vision.image_size),
            "audio": _audio_tower_config(raw),
            "raw": dict(raw),
        }
        plain = {f.name for f in fields(cls)} - set(kwargs)
        for name in plain:
            if raw.get(name) is not None:
                kwargs[name] = raw[name]
        if language == "qwen2":
            kwargs.pop("rope_scaling", None)  # ORIG's Qwen wrapper forces rope_scaling = None (spec 2.6)
        if raw.get("mm_spatial_pool_mode") is None:
            log_once(
                "config has no mm_spatial_pool_mode: videos use the training default 'bilinear' "
                "(ORIG would fail on the first video)"
            )
        cfg = cls(**kwargs)
        if cfg.mm_use_im_start_end:
            log_once("mm_use_im_start_end is set: prompts are NOT wrapped in <im_start>/<im_end> (no released "
                     "checkpoint of the supported families sets it)")
        if cfg.add_faster_video and not cfg.is_faster_video:
            log_once("add_faster_video is ignored: ORIG reads it only with a spatial merge and grid newlines")
        return cfg

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlavaConfig:
        return cls.from_dict(read_config_dict(path))


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {choices}")


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
        kind, base = _pretrained_tower_dims(tower)
    try:
        return VisionTowerConfig(kind=kind, **{**base, **explicit})
    except TypeError as e:
        raise ConfigError(f"vision tower {tower!r}: incomplete or unknown dimensions in mm_vision_tower_config ({e})") from e


def _pretrained_tower_dims(tower: str) -> tuple[str, dict[str, Any]]:
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
