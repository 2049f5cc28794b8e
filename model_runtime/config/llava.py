"""LlavaConfig: a LLaVA checkpoint's config.json parsed once (ORIG key names, ORIG inference defaults).

Everything downstream reads this object, never the raw dict. The language model is chosen from
`architectures`, never from `model_type` alone. No environment variables are read here.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model_runtime.config.errors import ConfigError, log_once
from model_runtime.config.towers import (
    AudioTowerConfig,
    VisionTowerConfig,
    audio_tower_config,
    vision_tower_config,
)

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
# llava-serve key `video_pool_position`: ORIG HEAD pools video frames after the projector; transformers'
# LlavaNextVideo (like the older LLaVA-NeXT-Video code it was converted from) pools before it
VIDEO_POOL_POSITIONS = ("after_projector", "before_projector")
# llava-serve keys the llava-hf translation sets for `hf_behaviour="transformers"` (docs/CHECKPOINTS.md 8):
# the unpadded side truncated with int() (ORIG) or int(round(x, 7)) (transformers' unpad_image); the
# images of a multi-image request as one padded crop each (ORIG) or each as if it came alone (transformers'
# LlavaNext / Llava processors)
UNPAD_ROUNDINGS = ("truncate", "round")
MULTI_IMAGE_LAYOUTS = ("single_crop", "as_single")


@dataclass(frozen=True)
class LlavaConfig:
    """Every multimodal key ORIG reads, with ORIG's inference defaults (spec section 2)."""

    language: str  # "qwen2" | "llama" | "mistral"
    hidden_size: int  # D
    vision: VisionTowerConfig
    mm_vision_tower: str
    mm_hidden_size: int = 0  # Cv: width of the selected tower features (x4/x5 for CLIP slice); 0 -> from_dict derives it
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
    # llava-serve key (the llava-hf LlavaNextVideo translation sets it): "before_projector" pools the
    # tower features with mm_spatial_pool_mode (average / max) and mm_spatial_pool_stride (default 2)
    video_pool_position: str = "after_projector"
    unpad_rounding: str = "truncate"  # llava-serve key: "round" follows transformers' unpad_image
    multi_image_layout: str = "single_crop"  # llava-serve key: "as_single" lays each image out as if alone
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
        _check_choice("video_pool_position", self.video_pool_position, VIDEO_POOL_POSITIONS)
        _check_choice("unpad_rounding", self.unpad_rounding, UNPAD_ROUNDINGS)
        _check_choice("multi_image_layout", self.multi_image_layout, MULTI_IMAGE_LAYOUTS)
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
        if self.pools_video_before_projector and (
            self.mm_spatial_pool_mode not in ("average", "max") or self.is_faster_video
        ):
            raise ConfigError(
                f"video_pool_position='before_projector' pools with mm_spatial_pool_mode average or max "
                f"and no faster video, got mm_spatial_pool_mode={self.mm_spatial_pool_mode!r}, "
                f"add_faster_video={self.add_faster_video!r}"
            )
        if self.is_anyres and self.mm_patch_merge_type.startswith("spatial") and not self.has_square_patch_map:
            raise ConfigError(
                f"mm_patch_merge_type={self.mm_patch_merge_type!r} with image_aspect_ratio={aspect!r} needs a "
                f"square P x P patch map per crop; mm_projector_type={self.mm_projector_type!r} / "
                f"mm_vision_select_feature={self.mm_vision_select_feature!r} do not give one (ORIG asserts too)"
            )

    def _check_feature_width(self) -> None:
        """mm_hidden_size, when given, must be the width of the selected tower features."""
        width = self.vision_feature_width
        if self.mm_hidden_size and self.mm_hidden_size != width:
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
    def pools_video_before_projector(self) -> bool:
        return self.video_pool_position == "before_projector"

    @property
    def is_faster_video(self) -> bool:
        """SlowFast video (spec 4.4): ORIG reads add_faster_video only in a spatial merge with grid newlines."""
        return (
            self.add_faster_video and self.mm_newline_position == "grid" and self.mm_patch_merge_type.startswith("spatial")
        )

    @property
    def vision_feature_width(self) -> int:
        """Width of the selected tower features: the tower's, times the concatenated CLIP layers."""
        width = self.vision.hidden_size
        if self.vision.kind == "clip":
            width *= len(self.clip_feature_layers)
        return width

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
        vision = vision_tower_config(str(tower), raw)
        language = _language(raw)
        kwargs: dict[str, Any] = {
            "language": language,
            "hidden_size": int(raw["hidden_size"]),
            "vision": vision,
            "mm_vision_tower": str(tower),
            "image_grid_pinpoints": parse_pinpoints(raw.get("image_grid_pinpoints"), vision.image_size),
            "audio": audio_tower_config(raw),
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
        if not cfg.mm_hidden_size:
            cfg = replace(cfg, mm_hidden_size=cfg.vision_feature_width)
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


def read_json_object(file: Path) -> dict[str, Any]:
    """A checkpoint's JSON file that must hold an object; ConfigError naming the file otherwise."""
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not valid JSON: {e.msg} at line {e.lineno}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return value


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
