"""Shared fixtures: tiny random checkpoints in the ORIG layout, built once per test session."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model_runtime import load_pretrained_model
from model_runtime.checkpoint_tools import make_demo
from testkit.media import random_image  # noqa: F401 - the tests import it from here


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory):
    """The servers tests start keep their state database (--data-dir's default) in a temporary folder, not in ~."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    return str(make_demo("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0))


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return load_pretrained_model(tiny_checkpoint, dtype="float32")


@pytest.fixture(scope="session")
def tiny_audio_checkpoint(tmp_path_factory) -> str:
    """The tiny checkpoint plus a tiny Whisper audio tower (EgoGPT speech_* keys)."""
    return str(make_demo("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-audio", seed=0, audio=True))


@pytest.fixture(scope="session")
def tiny_audio_model(tiny_audio_checkpoint):
    return load_pretrained_model(tiny_audio_checkpoint, dtype="float32")


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def random_waveform(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz mono float32 noise with a tone, `seconds` long (at least one sample)."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * 16000))
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def wait_until_ready(client, seconds: float = 30.0) -> None:
    """Poll a TestClient's /ready until the engine is up (or `seconds` pass)."""
    import time

    deadline = time.monotonic() + seconds
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
