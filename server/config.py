"""ServerConfig: every server setting, from command-line flags with environment fallbacks.

This is the only module that reads environment variables. Each flag `--some-flag` can also be set
with `LLAVA_SERVE_SOME_FLAG`; a flag on the command line wins. `MediaLimits` and `FetchPolicy` are
the media pipeline's share of the config (spec serving.md section 4), passed down as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from model_runtime import QUANTIZATIONS, EngineConfig  # QUANTIZATIONS: load_pretrained_model's

ENV_PREFIX = "LLAVA_SERVE_"
MiB = 2**20
MODALITIES = ("image", "video", "audio")
HF_BEHAVIOURS = ("original", "transformers")  # load_pretrained_model's hf_behaviour (llava-hf checkpoints)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env_default(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


def env_flag(flag: str) -> bool:
    """A boolean flag's environment fallback: 1/true/yes/on."""
    return (env_default(flag) or "").strip().lower() in ("1", "true", "yes", "on")


def env_list(flag: str) -> list[str]:
    """A repeatable flag's environment fallback: comma-separated values."""
    return [v.strip() for v in (env_default(flag) or "").split(",") if v.strip()]


def parse_mm_limits(value: str | None) -> dict[str, int]:
    """`image=8,video=2,audio=4` or JSON `{"image": 8}` (vLLM's --limit-mm-per-prompt)."""
    if not value:
        return {}
    text = value.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"limit_mm_per_prompt={value!r}: not valid JSON") from e
        if not isinstance(raw, dict):
            raise ValueError(f"limit_mm_per_prompt={value!r}: expected an object")
        pairs = list(raw.items())
    else:
        pairs = []
        for item in text.split(","):
            key, sep, count = item.partition("=")
            if not sep:
                raise ValueError(f"limit_mm_per_prompt={value!r}: expected modality=count pairs")
            pairs.append((key.strip(), count.strip()))
    limits = {}
    for key, count in pairs:
        if key not in MODALITIES:
            raise ValueError(f"limit_mm_per_prompt: unknown modality {key!r}; expected {', '.join(MODALITIES)}")
        try:
            limits[key] = int(count)
        except (TypeError, ValueError) as e:
            raise ValueError(f"limit_mm_per_prompt: {key}={count!r} is not an integer") from e
        if limits[key] < 0:
            raise ValueError(f"limit_mm_per_prompt: {key}={limits[key]} must be >= 0")
    return limits


_SIZE_UNITS = {"": 1, "k": 10**3, "ki": 2**10, "m": 10**6, "mi": 2**20, "g": 10**9, "gi": 2**30, "t": 10**12,
               "ti": 2**40}


def parse_memory(value: str | None) -> int | float | None:
    """`--kv-cache-memory`: `auto` (None), a share of the memory available at start-up (a number in
    (0, 1], e.g. 0.5), or a size in bytes with an optional unit (`4GiB`, `512MiB`, `2G`, `1073741824`)."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    text = value.strip().lower().removesuffix("b")
    number = text.rstrip("kmgti")
    unit = text[len(number):]
    try:
        amount = float(number)
    except ValueError as e:
        raise ValueError(f"kv_cache_memory={value!r}: expected auto, a share like 0.5 or a size like 4GiB") from e
    if unit not in _SIZE_UNITS:
        raise ValueError(f"kv_cache_memory={value!r}: unknown unit {unit!r}")
    if not unit and 0 < amount <= 1:
        return amount
    size = int(amount * _SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"kv_cache_memory={value!r}: must be positive")
    return size


@dataclass(frozen=True)
class MediaLimits:
    """What one request's media may be (spec section 4). Checked before allocation where possible."""

    max_images: int = 8
    max_videos: int = 2
    max_audios: int = 4
    max_image_pixels: int = 16_777_216  # 16.7 Mpx, declared (header) and decoded
    max_image_aspect: float = 200.0  # long side / short side
    max_video_width: int = 3840  # the long side; the short side is capped by max_video_height
    max_video_height: int = 2160
    max_video_seconds: float = 600.0
    max_video_frames: int | None = None  # sampled-frame ceiling; None: the checkpoint's frames_upbound, else 32
    video_decode_seconds: float = 20.0  # wall time for one video's decode
    max_audio_seconds: float = 600.0
    max_audio_channels: int = 2
    min_audio_sample_rate: int = 8_000
    max_audio_sample_rate: int = 192_000
    image_decode_seconds: float = 10.0  # wall time for one image's (or audio's) decode

    def __post_init__(self) -> None:
        for name in ("max_images", "max_videos", "max_audios"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("max_image_pixels", "max_video_width", "max_video_height", "max_audio_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("max_video_seconds", "video_decode_seconds", "max_audio_seconds", "image_decode_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if self.max_image_aspect < 1:
            raise ValueError(f"max_image_aspect={self.max_image_aspect}: must be >= 1")
        if self.max_video_frames is not None and self.max_video_frames < 1:
            raise ValueError(f"max_video_frames={self.max_video_frames}: must be >= 1")

    def max_items(self, modality: str) -> int:
        return {"image": self.max_images, "video": self.max_videos, "audio": self.max_audios}[modality]


@dataclass(frozen=True)
class FetchPolicy:
    """Where media may come from and how long / how much a fetch may take (spec section 4)."""

    allow_http: bool = False  # plain http:// (local use only)
    allow_loopback: bool = False  # 127.0.0.0/8 and ::1 origins (local use only)
    allowed_domains: tuple[str, ...] = ()  # empty: any public host; else these hosts and their subdomains
    allowed_local_path: str | None = None  # file:// URLs resolve inside this folder; None: file:// refused
    ca_file: str | None = None  # PEM bundle trusted for https media besides the public CAs
    max_redirects: int = 3
    connect_timeout: float = 3.0
    image_timeout: float = 10.0
    audio_timeout: float = 10.0
    video_timeout: float = 30.0
    max_image_bytes: int = 20 * MiB
    max_audio_bytes: int = 25 * MiB
    max_video_bytes: int = 100 * MiB

    def __post_init__(self) -> None:
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects={self.max_redirects}: must be >= 0")
        for name in ("connect_timeout", "image_timeout", "audio_timeout", "video_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        for name in ("max_image_bytes", "max_audio_bytes", "max_video_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file={self.ca_file!r}: not a file")
        if self.allowed_local_path is not None and not Path(self.allowed_local_path).is_dir():
            raise ValueError(f"allowed_local_path={self.allowed_local_path!r}: not a folder")
        domains = tuple(d.strip().lower().rstrip(".") for d in self.allowed_domains if d.strip())
        object.__setattr__(self, "allowed_domains", domains)

    def timeout(self, modality: str) -> float:
        return {"image": self.image_timeout, "audio": self.audio_timeout, "video": self.video_timeout}[modality]

    def max_bytes(self, modality: str) -> int:
        return {"image": self.max_image_bytes, "audio": self.max_audio_bytes, "video": self.max_video_bytes}[modality]


@dataclass(frozen=True)
class ServerConfig:
    model: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    device: str = "cpu"
    device_map: str | None = None  # "auto" or one device; wins over `device`
    quantization: str = "none"  # one of QUANTIZATIONS
    model_base: str | None = None  # base under a LoRA / projector-only checkpoint
    hf_behaviour: str = "original"  # llava-hf checkpoints, where transformers differs: ORIG's behaviour or transformers'
    max_num_seqs: int = 32
    max_model_len: int | None = None
    kv_cache_memory: int | float | None = None  # bytes, a share of available memory, or None: auto (EngineConfig)
    block_size: int = 16
    max_num_batched_tokens: int | None = None  # None: the engine's default for the device
    step_seconds: float = 1.5  # CPU, no max_num_batched_tokens: the paced step length (EngineConfig)
    packed_linear: bool = True  # CPU float32: the LM's linears run on oneDNN-packed weights (arch/cpu_linear.py)
    enable_prefix_caching: bool = True
    encoder_cache_bytes: int = 512 * MiB
    log_level: str = "info"
    api_keys: tuple[str, ...] = ()  # empty: no auth
    metrics_public: bool = False  # /metrics without a key
    playground: bool = True  # the web page at / (server/playground/)
    max_queued_requests: int = 256  # admitted and not yet running; beyond it 429
    shutdown_timeout: float = 25.0  # SIGTERM: seconds in-flight requests may take to finish
    max_body_bytes: int = 32 * MiB
    max_n: int = 8  # choices per request
    media_workers: int = 2  # decoder processes
    media_worker_memory_mb: int = 4096  # address-space cap of one decoder process; 0: none
    ready_stall_seconds: float = 60.0  # /ready fails when the worker's heartbeat is older than this
    limits: MediaLimits = field(default_factory=MediaLimits)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: must be 0..65535")
        self.engine_config()  # the engine's knobs are validated where they are defined
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={self.quantization!r}: expected one of {QUANTIZATIONS}")
        if self.hf_behaviour not in HF_BEHAVIOURS:
            raise ValueError(f"hf_behaviour={self.hf_behaviour!r}: expected one of {HF_BEHAVIOURS}")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        if self.max_queued_requests < 1:
            raise ValueError(f"max_queued_requests={self.max_queued_requests}: must be >= 1")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout={self.shutdown_timeout}: must be >= 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={self.max_body_bytes}: must be >= 1024")
        if self.max_n < 1:
            raise ValueError(f"max_n={self.max_n}: must be >= 1")
        if self.media_workers < 1:
            raise ValueError(f"media_workers={self.media_workers}: must be >= 1")
        if self.media_worker_memory_mb < 0:
            raise ValueError(f"media_worker_memory_mb={self.media_worker_memory_mb}: must be >= 0")
        if not self.ready_stall_seconds > 0:
            raise ValueError(f"ready_stall_seconds={self.ready_stall_seconds}: must be > 0")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys: an API key must not be empty")

    def engine_config(self, max_model_len: int | None = None) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs, max_model_len=max_model_len or self.max_model_len,
            kv_cache_memory=self.kv_cache_memory, block_size=self.block_size,
            max_num_batched_tokens=self.max_num_batched_tokens, step_seconds=self.step_seconds,
            enable_prefix_caching=self.enable_prefix_caching, encoder_cache_bytes=self.encoder_cache_bytes,
        )

    @staticmethod
    def default_served_name(model: str) -> str:
        path = Path(model)
        return path.name if path.exists() else model
