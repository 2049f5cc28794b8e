"""Configuration: the checkpoint (LlavaConfig, tower dimensions) and the engine (EngineConfig).

Frozen dataclasses built once and passed down; nothing here reads the environment (only
`server/config.py` does).
"""

from model_runtime.config.engine import EngineConfig
from model_runtime.config.errors import (
    ConfigError,
    log_once,
)
from model_runtime.config.llava import (
    LANGUAGE_BY_ARCHITECTURE,
    LANGUAGE_BY_MODEL_TYPE,
    MERGE_TYPES,
    NEWLINE_POSITIONS,
    PADDING_SIDES,
    POOL_MODES,
    PROJECTOR_PATTERNS,
    RESAMPLER_TYPES,
    SELECT_FEATURES,
    SLICE_M25811_F6_LAYERS,
    VALID_PINPOINT_SIDES,
    VIDEO_POOL_POSITIONS,
    VIDEO_POOL_STRIDE,
    LlavaConfig,
    parse_pinpoints,
    read_config_dict,
)
from model_runtime.config.towers import (
    DEFAULT_ACT,
    KNOWN_CLIP_TOWERS,
    SIGLIP_SO400M,
    WHISPER_LARGE_V3,
    WHISPER_MAX_SOURCE_POSITIONS,
    AudioTowerConfig,
    VisionTowerConfig,
    audio_tower_config,
    pretrained_tower_dims,
    vision_tower_config,
)

__all__ = [
    "AudioTowerConfig",
    "ConfigError",
    "DEFAULT_ACT",
    "EngineConfig",
    "KNOWN_CLIP_TOWERS",
    "LANGUAGE_BY_ARCHITECTURE",
    "LANGUAGE_BY_MODEL_TYPE",
    "LlavaConfig",
    "MERGE_TYPES",
    "NEWLINE_POSITIONS",
    "PADDING_SIDES",
    "POOL_MODES",
    "PROJECTOR_PATTERNS",
    "RESAMPLER_TYPES",
    "SELECT_FEATURES",
    "SIGLIP_SO400M",
    "SLICE_M25811_F6_LAYERS",
    "VALID_PINPOINT_SIDES",
    "VIDEO_POOL_POSITIONS",
    "VIDEO_POOL_STRIDE",
    "VisionTowerConfig",
    "WHISPER_LARGE_V3",
    "WHISPER_MAX_SOURCE_POSITIONS",
    "audio_tower_config",
    "log_once",
    "parse_pinpoints",
    "pretrained_tower_dims",
    "read_config_dict",
    "vision_tower_config",
]
