"""ServerConfig: every server setting, with the flag and environment variable that set it.

This is the only module that reads environment variables. Each setting is a field of a frozen
dataclass whose metadata names its flag `--some-flag` (`Flag`), also set with `LLAVA_SERVE_SOME_FLAG`;
a flag on the command line wins. server/cli.py builds the parser from these fields, so each default,
help line and limit is stated once. model_runtime's `EngineConfig` is chained in as
`ServerConfig.engine`, its flags listed in `ENGINE_FLAGS`. `MediaLimits` and `FetchPolicy` are the
media pipeline's share of the config (spec serving.md section 4), passed down as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model_runtime import (
    DEFAULT_MAX_FRAMES,
    GPU_STEP_TOKENS,
    HF_BEHAVIOURS,
    IDLE_STEP_FACTOR,
    KV_AUTO_CPU_BYTES,
    KV_AUTO_CUDA_SHARE,
    QUANTIZATIONS,
    EngineConfig,
)

ENV_PREFIX = "LLAVA_SERVE_"
MiB = 2**20
MODALITIES = ("image", "video", "audio")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: model_runtime/checkpoint/precision.py
LOG_LEVELS = ("debug", "info", "warning", "error")


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


MODEL, ENGINE, HTTP, FETCH, LIMITS = "model", "engine (docs/ENGINE.md)", "HTTP", "media fetching", "media limits"
STATE, BATCH = "state database", "batches"
GROUPS = (MODEL, ENGINE, HTTP, FETCH, LIMITS, STATE, BATCH)  # the --help sections, in order (docs/OPERATIONS.md follows them)


@dataclass(frozen=True)
class Flag:
    """How one config field is set from the command line; server/cli.py builds the parser from these.

    The flag's default is the field's default (in the flag's unit); a bool field's flag is a switch
    that flips it. The environment variable is `env_name(name)`.
    """

    name: str  # `--max-num-seqs`
    help: str
    group: str  # one of GROUPS
    unit: int = 1  # the field counts bytes, the flag `unit`s (MiB); such a flag takes a float
    parse: Callable[[Any], Any] | None = None  # the flag's text (list, if repeatable) -> the field's value
    covers: tuple[str, ...] = ()  # `parse` returns these fields' values as a dict (--limit-mm-per-prompt)
    show: Callable[[type], str] | None = None  # the default as the flag writes it, from the config class
    choices: tuple[str, ...] | None = None
    is_repeatable: bool = False  # given several times; a comma-separated list in the environment
    auto: str | None = None  # what a default of None means, as --help and the docs say it


def flag(name: str, help: str, group: str, **kwargs: Any) -> dict[str, Flag]:
    """A field's metadata naming its flag."""
    return {"flag": Flag(name, help, group, **kwargs)}


def parse_domains(values: Iterable[str]) -> tuple[str, ...]:
    """`--allowed-media-domains`: comma-separated host names, lower case and without a trailing dot."""
    return tuple(d.strip().lower().rstrip(".") for item in values for d in item.split(",") if d.strip())


MEDIA_ITEM_FIELDS = {modality: f"max_{modality}s" for modality in MODALITIES}  # MediaLimits' fields


def parse_media_items(value: str) -> dict[str, int]:
    return {MEDIA_ITEM_FIELDS[modality]: count for modality, count in parse_mm_limits(value).items()}


def show_media_items(limits: Any) -> str:
    """The item counts of a MediaLimits (the class: its defaults) as --limit-mm-per-prompt writes them."""
    return ",".join(f"{modality}={getattr(limits, name)}" for modality, name in MEDIA_ITEM_FIELDS.items())


@dataclass(frozen=True)
class MediaLimits:
    """What one request's media may be (spec section 4). Checked before allocation where possible."""

    max_images: int = field(default=8, metadata=flag(
        "--limit-mm-per-prompt", "items per request as modality=count pairs, e.g. image=4,video=0 (or JSON)", LIMITS,
        parse=parse_media_items, covers=tuple(MEDIA_ITEM_FIELDS.values()), show=show_media_items))
    max_videos: int = 2  # --limit-mm-per-prompt
    max_audios: int = 4  # --limit-mm-per-prompt
    max_image_pixels: int = field(default=16_777_216, metadata=flag(
        "--max-image-pixels", "largest image, width x height (declared and decoded)", LIMITS))
    max_image_aspect: float = field(default=200.0, metadata=flag(
        "--max-image-aspect", "largest long side / short side ratio of an image", LIMITS))
    max_video_width: int = field(default=3840, metadata=flag(
        "--max-video-width", "largest video frame, long side in pixels", LIMITS))
    max_video_height: int = field(default=2160, metadata=flag(
        "--max-video-height", "largest video frame, short side in pixels", LIMITS))
    max_video_seconds: float = field(default=600.0, metadata=flag("--max-video-seconds", "longest video", LIMITS))
    max_video_frames: int | None = field(default=None, metadata=flag(
        "--max-video-frames", "ceiling of frames sampled per video", LIMITS,
        auto=f"the checkpoint's frames_upbound, else {DEFAULT_MAX_FRAMES}"))
    video_decode_seconds: float = field(default=20.0, metadata=flag(
        "--video-decode-timeout", "wall-clock seconds to decode one video", LIMITS))
    image_decode_seconds: float = field(default=10.0, metadata=flag(
        "--image-decode-timeout", "wall-clock seconds to decode one image or audio file", LIMITS))
    max_audio_seconds: float = field(default=600.0, metadata=flag("--max-audio-seconds", "longest audio", LIMITS))
    max_audio_channels: int = field(default=2, metadata=flag("--max-audio-channels", "most audio channels", LIMITS))
    min_audio_sample_rate: int = field(default=8_000, metadata=flag(
        "--min-audio-sample-rate", "lowest audio sample rate in Hz", LIMITS))
    max_audio_sample_rate: int = field(default=192_000, metadata=flag(
        "--max-audio-sample-rate", "highest audio sample rate in Hz", LIMITS))

    def __post_init__(self) -> None:
        for name in MEDIA_ITEM_FIELDS.values():
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
        return getattr(self, MEDIA_ITEM_FIELDS[modality])


@dataclass(frozen=True)
class FetchPolicy:
    """Where media may come from and how long / how much a fetch may take (spec section 4)."""

    allowed_domains: tuple[str, ...] = field(default=(), metadata=flag(  # empty: any public host
        "--allowed-media-domains", "only fetch media from these hosts and their subdomains", FETCH,
        parse=parse_domains, is_repeatable=True))
    allowed_local_path: str | None = field(default=None, metadata=flag(  # None: file:// refused
        "--allowed-local-media-path", "serve file:// media URLs from inside this folder", FETCH, auto="refused"))
    allow_http: bool = field(default=False, metadata=flag(
        "--allow-http-media", "also fetch plain http:// media URLs (local use only)", FETCH))
    allow_loopback: bool = field(default=False, metadata=flag(  # 127.0.0.0/8 and ::1 origins
        "--allow-loopback-media", "also fetch media from loopback addresses (local use only)", FETCH))
    ca_file: str | None = field(default=None, metadata=flag(  # trusted besides the public CAs
        "--media-ca-file", "PEM bundle of extra CAs trusted for https media (e.g. an internal CA)", FETCH))
    max_redirects: int = field(default=3, metadata=flag(
        "--max-media-redirects", "redirects followed per fetch, each re-checked", FETCH))
    connect_timeout: float = field(default=3.0, metadata=flag(
        "--media-connect-timeout", "seconds to connect to a media origin", FETCH))
    image_timeout: float = field(default=10.0, metadata=flag(
        "--image-fetch-timeout", "seconds to fetch one image", FETCH))
    audio_timeout: float = field(default=10.0, metadata=flag(
        "--audio-fetch-timeout", "seconds to fetch one audio file", FETCH))
    video_timeout: float = field(default=30.0, metadata=flag(
        "--video-fetch-timeout", "seconds to fetch one video", FETCH))
    max_image_bytes: int = field(default=20 * MiB, metadata=flag(
        "--max-image-mb", "largest image file in MiB", FETCH, unit=MiB))
    max_audio_bytes: int = field(default=25 * MiB, metadata=flag(
        "--max-audio-mb", "largest audio file in MiB", FETCH, unit=MiB))
    max_video_bytes: int = field(default=100 * MiB, metadata=flag(
        "--max-video-mb", "largest video file in MiB", FETCH, unit=MiB))

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
        if self.allowed_domains != parse_domains(self.allowed_domains):
            raise ValueError(f"allowed_domains={self.allowed_domains!r}: expected lower-case names (parse_domains)")

    def timeout(self, modality: str) -> float:
        return {"image": self.image_timeout, "audio": self.audio_timeout, "video": self.video_timeout}[modality]

    def max_bytes(self, modality: str) -> int:
        return {"image": self.max_image_bytes, "audio": self.max_audio_bytes, "video": self.max_video_bytes}[modality]


DAY = 86_400
STATE_DB_SCHEMES = ("sqlite", "postgresql", "postgres")  # postgres: the alias libpq accepts
STATE_DB_FILE = "state.db"  # the SQLite file in --data-dir


def default_data_dir() -> Path:
    """--data-dir's default: $XDG_DATA_HOME/llava-serve, else ~/.local/share/llava-serve (the XDG base
    directories): the same folder whichever directory the server starts in, writable by a non-root user."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llava-serve"


@dataclass(frozen=True)
class StoreConfig:
    """Where state that outlives a request lives (stored responses, files, batches) and how long (server/store/)."""

    data_dir: str | None = field(default=None, metadata=flag(
        "--data-dir", f"folder of the state database, created at start-up (SQLite: {STATE_DB_FILE})", STATE,
        auto="$XDG_DATA_HOME/llava-serve, else ~/.local/share/llava-serve"))
    state_db: str | None = field(default=None, metadata=flag(
        "--state-db", "database URL instead of the SQLite file, shared by replicas: postgresql://USER:PASSWORD@HOST/DB",
        STATE, auto="SQLite in --data-dir"))
    retention_seconds: int = field(default=30 * DAY, metadata=flag(
        "--response-retention-days", "stored responses older than this are deleted", STATE, unit=DAY))
    max_response_bytes_per_key: int = field(default=1024 * MiB, metadata=flag(
        "--max-stored-response-mb", "stored responses per API key (input, output and media) in MiB; the oldest are "
        "deleted beyond it", STATE, unit=MiB))

    def __post_init__(self) -> None:
        if self.state_db is not None:
            scheme = self.state_db.partition(":")[0].partition("+")[0].lower()
            if scheme not in STATE_DB_SCHEMES or "://" not in self.state_db:
                raise ValueError("state_db: expected postgresql://USER:PASSWORD@HOST/DB or sqlite:///PATH (the "
                                 "value given is not repeated: it may hold a password)")
            if scheme == "sqlite" and self.state_db.partition("://")[2].strip("/") in ("", ":memory:"):
                raise ValueError("state_db: an in-memory SQLite database keeps nothing; give sqlite:///PATH")
        if self.retention_seconds < 1:
            raise ValueError(f"retention_seconds={self.retention_seconds}: must be >= 1")
        if self.max_response_bytes_per_key < 1:
            raise ValueError(f"max_response_bytes_per_key={self.max_response_bytes_per_key}: must be >= 1")

    def folder(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    def url(self) -> str:
        """The database URL: --state-db, else the SQLite file in the data folder."""
        return self.state_db or f"sqlite:///{self.folder() / STATE_DB_FILE}"


@dataclass(frozen=True)
class BatchConfig:
    """Files and batches (/v1/files, /v1/batches) and the batch runner (server/batch/)."""

    max_file_bytes: int = field(default=32 * MiB, metadata=flag(
        "--max-file-mb", "largest uploaded file in MiB (413 beyond; --max-request-body-mb bounds the upload too)",
        BATCH, unit=MiB))
    max_file_bytes_per_key: int = field(default=1024 * MiB, metadata=flag(
        "--max-stored-file-mb", "uploaded and batch output files per API key in MiB (413 beyond)", BATCH, unit=MiB))
    max_active_batches_per_key: int = field(default=8, metadata=flag(
        "--max-active-batches", "batches per API key not yet finished (429 beyond)", BATCH))
    max_lines_in_flight: int = field(default=8, metadata=flag(
        "--max-batch-lines-in-flight", "batch lines this server runs at once (their media fetched only then)", BATCH))
    lease_seconds: float = field(default=60.0, metadata=flag(
        "--batch-lease-seconds", "a claimed batch line returns to the queue this long after its server stops "
        "renewing it (a replica that died)", BATCH))

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_file_bytes_per_key", "max_active_batches_per_key", "max_lines_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.lease_seconds >= 1:
            raise ValueError(f"lease_seconds={self.lease_seconds}: must be >= 1")


# EngineConfig's flags: model_runtime knows no command line, so they are listed here, by field.
ENGINE_FLAGS = {
    "max_num_seqs": Flag("--max-num-seqs", "sequences decoding at once (each of a request's `n` choices is one)",
                         ENGINE),
    "max_model_len": Flag("--max-model-len", "context length (prompt + output tokens)", MODEL,
                          auto="the checkpoint's"),
    "seed": Flag("--seed", "seeds the choice of seeds for requests that give none", ENGINE),
    "kv_cache_memory": Flag(
        "--kv-cache-memory", "KV cache size: a size (`4GiB`, `512MiB`), a share of the memory available at "
        f"start-up (`0.5`), or auto (GPU: {KV_AUTO_CUDA_SHARE} of free memory; CPU: min({KV_AUTO_CPU_BYTES // 2**30} "
        "GiB, half the available memory))", ENGINE,
        parse=parse_memory, auto="auto"),
    "block_size": Flag("--block-size", "token positions per KV cache block (a power of two)", ENGINE),
    "max_num_batched_tokens": Flag(
        "--max-num-batched-tokens", "work per engine step in prompt tokens: decode rows always run, prompts and "
        f"media encoding are cut into chunks to fit; auto: {GPU_STEP_TOKENS} on a GPU, on the CPU paced by time "
        f"(`--step-seconds`); steps in which nothing decodes take {IDLE_STEP_FACTOR} times as much", ENGINE,
        auto="auto"),
    "step_seconds": Flag(
        "--step-seconds", "CPU without `--max-num-batched-tokens`: each step in which some stream decodes is "
        "sized, from the engine's own step timings, to last about this long: the longest token gap while other "
        "requests' prompts and media are computed", ENGINE),
    "enable_prefix_caching": Flag("--no-prefix-caching", "do not reuse the KV of prompt prefixes seen before",
                                  ENGINE),
    "encoder_cache_bytes": Flag("--encoder-cache-mb", "encoded media kept for reuse, in MiB (0: none)", ENGINE,
                                unit=MiB),
}


@dataclass(frozen=True)
class ServerConfig:
    model: str = field(metadata=flag("--model", "checkpoint folder or hub id", MODEL))
    served_model_name: str = field(metadata=flag(
        "--served-model-name", "name clients pass as `model`", MODEL, auto="the folder name"))
    dtype: str = field(default="auto", metadata=flag(
        "--dtype", "weights dtype: auto (what the hardware computes fast: a 16-bit checkpoint stays 16-bit on "
        "the CPU only with native bf16/fp16 (AVX512-BF16, AMX), else float32; on CUDA bf16 where supported, "
        "else fp16), float32, bfloat16, float16", MODEL, choices=DTYPES))
    device: str = field(default="cpu", metadata=flag("--device", "torch device for the model", MODEL))
    device_map: str | None = field(default=None, metadata=flag(
        "--device-map", "spread the model over devices: auto, or one device (wins over --device)", MODEL))
    quantization: str = field(default="none", metadata=flag(
        "--quantization", "bitsandbytes quantization of the language model", MODEL, choices=QUANTIZATIONS))
    model_base: str | None = field(default=None, metadata=flag(
        "--model-base", "base model under a LoRA or projector-only --model (folder or hub id)", MODEL))
    hf_behaviour: str = field(default="original", metadata=flag(
        "--hf-behaviour", "llava-hf checkpoints only (refused for others): where transformers and the original "
        "LLaVA code differ, serve the original's behaviour (`original`) or transformers' (`transformers`: the "
        "checkpoint's chat template, transformers' unpad rounding and image layouts); docs/CHECKPOINTS.md "
        "section 8", MODEL, choices=HF_BEHAVIOURS))
    engine: EngineConfig = field(default_factory=EngineConfig)  # flags: ENGINE_FLAGS
    packed_linear: bool = field(default=True, metadata=flag(  # arch/cpu_linear.py, applied at load
        "--no-packed-linear", "CPU, float32: keep PyTorch's default matmul for the language model's linear "
        "layers instead of weights packed once for oneDNN at start-up (2-3x faster decoding on the measured CPU, "
        "and a row's logits that do not depend on its batch; docs/PERFORMANCE.md)", ENGINE))
    host: str = field(default="127.0.0.1", metadata=flag("--host", "address to bind", HTTP))
    port: int = field(default=8000, metadata=flag("--port", "port to bind", HTTP))
    api_keys: tuple[str, ...] = field(default=(), metadata=flag(  # empty: no auth
        "--api-key", "bearer token clients must send (every route but /health, /ready)", HTTP, parse=tuple,
        is_repeatable=True))
    metrics_public: bool = field(default=False, metadata=flag(
        "--metrics-public", "serve /metrics without an API key", HTTP))
    playground: bool = field(default=True, metadata=flag(  # server/playground/
        "--no-playground", "do not serve the web playground page at `/`", HTTP))
    max_queued_requests: int = field(default=256, metadata=flag(
        "--max-queued-requests", "requests admitted and not yet running; beyond it 429", HTTP))
    shutdown_timeout: float = field(default=25.0, metadata=flag(
        "--shutdown-timeout", "seconds in-flight requests may take to finish after SIGTERM", HTTP))
    max_body_bytes: int = field(default=32 * MiB, metadata=flag(
        "--max-request-body-mb", "largest request body in MiB (413 beyond)", HTTP, unit=MiB))
    max_n: int = field(default=8, metadata=flag("--max-n", "largest `n` (choices per request)", HTTP))
    ready_stall_seconds: float = field(default=60.0, metadata=flag(  # the worker's heartbeat
        "--ready-stall-timeout", "/ready fails when the engine loop has not turned for this many seconds", HTTP))
    log_level: str = field(default="info", metadata=flag("--log-level", "log level", HTTP, choices=LOG_LEVELS))
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    limits: MediaLimits = field(default_factory=MediaLimits)
    store: StoreConfig = field(default_factory=StoreConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    media_workers: int = field(default=2, metadata=flag(
        "--media-workers", "decoder processes (isolated from the server)", LIMITS))
    media_worker_memory_mb: int = field(default=4096, metadata=flag(
        "--media-worker-memory-mb", "address-space cap of one decoder process in MiB (0: none)", LIMITS))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: must be 0..65535")
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
        """The engine's config for a model whose context is `max_model_len` (at most the flag's)."""
        return replace(self.engine, max_model_len=max_model_len or self.engine.max_model_len)

    @staticmethod
    def default_served_name(model: str) -> str:
        path = Path(model)
        return path.name if path.exists() else model


def field_flags(cls: type) -> dict[str, Flag]:
    """The flags of a config dataclass's fields, by field name (those without one are set otherwise)."""
    if cls is EngineConfig:
        return ENGINE_FLAGS
    return {f.name: f.metadata["flag"] for f in fields(cls) if "flag" in f.metadata}
