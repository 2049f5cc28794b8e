"""Tiny media made on the spot (PyAV, soundfile, Pillow), and the check every error body gets."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import av
import numpy as np
import soundfile
from PIL import Image

# a memory address, a traceback, a Python file or a filesystem path in a response body is a leak
LEAK = re.compile(r"\b0x[0-9a-fA-F]{4,}|Traceback|\.py\b|/(tmp|work|root|home|usr|etc|proc|site-packages)/")


def assert_no_leak(text: str) -> None:
    assert not LEAK.search(text), text


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    image = Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny (invalid) data chunk."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def video_bytes(num_frames: int = 12, fps: int = 6, width: int = 64, height: int = 48, container: str = "mp4",
                codec: str = "mpeg4", audio_seconds: float | None = None, seed: int = 0) -> bytes:
    """A short clip of noise frames; with `audio_seconds`, a 440 Hz mono AAC/Opus track as well."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        audio = None
        if audio_seconds:
            audio = out.add_stream("aac" if container == "mp4" else "libopus", rate=48000 if container != "mp4" else 16000)
            audio.layout = "mono"
        for _ in range(num_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            rate = audio.rate
            t = np.arange(int(rate * audio_seconds)) / rate
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            for k in range(0, samples.shape[1], 960):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 960]), format="fltp",
                                                   layout="mono")
                frame.sample_rate = rate
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return buf.getvalue()


def audio_bytes(seconds: float = 1.0, rate: int = 22050, channels: int = 1, fmt: str = "WAV", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    samples = rng.uniform(-0.2, 0.2, (int(seconds * rate), channels)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt)
    return buf.getvalue()


def long_silent_flac(seconds: float, rate: int = 8000) -> bytes:
    """Hours of silence compress to kilobytes; written in blocks so the test never holds it all."""
    buf = io.BytesIO()
    block = np.zeros((rate * 60, 1), dtype=np.int16)
    with soundfile.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 60)):
            f.write(block)
    return buf.getvalue()
