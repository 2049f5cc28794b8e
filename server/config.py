"""ServerConfig: every server setting, from command-line flags with environment fallbacks.

This is the only module that reads environment variables. Each flag `--some-flag` can also be set
with `LLAVA_SERVE_SOME_FLAG`; a flag on the command line wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "LLAVA_SERVE_"
QUANTIZATIONS = ("none", "bitsandbytes-8bit", "bitsandbytes-4bit")  # model_runtime's load_pretrained_model


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env_default(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


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
    max_num_seqs: int = 32
    max_model_len: int | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: must be 0..65535")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: must be >= 1")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={self.quantization!r}: expected one of {QUANTIZATIONS}")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")

    @staticmethod
    def default_served_name(model: str) -> str:
        path = Path(model)
        return path.name if path.exists() else model
