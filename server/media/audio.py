"""Audio bytes -> a float32 mono 16 kHz waveform (runs in a decoder process).

Formats WAV, FLAC, OGG (Vorbis/Opus), MP3 through soundfile; channels, sample rate and duration
are read from the header and refused before any sample is decoded, then the read itself is
capped. Resampling (and for `use_audio`, a video's own track) goes through soxr.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from model_runtime import AUDIO_SAMPLE_RATE  # Hz: what the Whisper audio tower takes
from server.config import MediaLimits
from server.media import MediaError

log = logging.getLogger(__name__)

ALLOWED_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}


@dataclass(frozen=True)
class DecodedAudio:
    waveform: np.ndarray  # [num_samples] float32, mono, 16 kHz
    format: str  # wav | flac | ogg | mp3
    sample_rate: int  # of the source
    num_channels: int  # of the source
    duration: float  # seconds


def decode_audio(data: bytes, limits: MediaLimits) -> DecodedAudio:
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as e:  # libsndfile's errors carry its own text: log it, answer with ours
        log.info("audio header rejected: %r", e)
        raise MediaError("invalid_audio", "the audio could not be decoded (expected WAV, FLAC, OGG or MP3)") from e
    fmt = ALLOWED_FORMATS.get(info.format)
    if fmt is None:
        raise MediaError("unsupported_media_format",
                         f"{info.format} audio is not accepted; send WAV, FLAC, OGG or MP3")
    check_header(info.channels, info.samplerate, limits)
    max_frames = int(limits.max_audio_seconds * info.samplerate)
    if info.frames > max_frames:
        raise too_long(info.frames / info.samplerate, limits)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            samples = f.read(frames=max_frames + 1, dtype="float32", always_2d=True)  # [n, channels]
    except Exception as e:
        log.info("audio decode failed: %r", e)
        raise MediaError("invalid_audio", "the audio could not be decoded") from e
    if len(samples) > max_frames:
        raise too_long(len(samples) / info.samplerate, limits)
    if len(samples) == 0:
        raise MediaError("invalid_audio", "the audio holds no samples")
    return DecodedAudio(to_mono_16k(samples, info.samplerate), fmt, info.samplerate, info.channels,
                        len(samples) / info.samplerate)


def check_header(num_channels: int, sample_rate: int, limits: MediaLimits) -> None:
    if not 1 <= num_channels <= limits.max_audio_channels:
        raise MediaError("unsupported_media_format",
                         f"the audio has {num_channels} channels; at most {limits.max_audio_channels} are accepted")
    if not limits.min_audio_sample_rate <= sample_rate <= limits.max_audio_sample_rate:
        raise MediaError("unsupported_media_format",
                         f"the audio's sample rate is {sample_rate} Hz; {limits.min_audio_sample_rate}-"
                         f"{limits.max_audio_sample_rate} Hz are accepted")


def too_long(seconds: float, limits: MediaLimits) -> MediaError:
    return MediaError("audio_too_long",
                      f"the audio lasts {seconds:.1f} s; at most {limits.max_audio_seconds:.0f} s are accepted")


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """[n, channels] float32 at `sample_rate` -> [m] float32 mono at 16 kHz (channel mean, then soxr)."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples.astype(np.float32)
    if sample_rate == AUDIO_SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    return soxr.resample(mono, sample_rate, AUDIO_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
