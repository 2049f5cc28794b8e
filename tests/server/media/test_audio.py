"""Audio decoding: header checks first, capped reads, 16 kHz mono out."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime import AUDIO_SAMPLE_RATE
from server.config import MediaLimits
from server.media import MediaError
from server.media.audio import decode_audio
from testkit.media import audio_bytes, long_silent_flac

LIMITS = MediaLimits()


def code_of(data: bytes, limits: MediaLimits = LIMITS) -> str:
    with pytest.raises(MediaError) as e:
        decode_audio(data, limits)
    return e.value.code


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_resample_to_16k_mono(fmt):
    decoded = decode_audio(audio_bytes(0.5, rate=22050, channels=2, fmt=fmt), LIMITS)
    assert decoded.waveform.dtype == np.float32 and decoded.waveform.ndim == 1
    assert decoded.format == fmt.lower() and decoded.sample_rate == 22050 and decoded.num_channels == 2
    assert abs(len(decoded.waveform) - AUDIO_SAMPLE_RATE * 0.5) < AUDIO_SAMPLE_RATE * 0.06  # mp3 pads a little


def test_resampling_keeps_a_tone():
    import io

    import soundfile

    rate = 44100
    t = np.arange(rate) / rate
    buf = io.BytesIO()
    soundfile.write(buf, np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate, format="WAV", subtype="FLOAT")
    wave = decode_audio(buf.getvalue(), LIMITS).waveform
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * AUDIO_SAMPLE_RATE / len(wave) - 1000) < 5


def test_an_hour_of_silence_is_refused_from_the_header():
    assert code_of(long_silent_flac(3600)) == "audio_too_long"


def test_channels_rates_and_garbage():
    assert code_of(audio_bytes(0.1, channels=3)) == "unsupported_media_format"
    assert code_of(audio_bytes(0.1, rate=4000)) == "unsupported_media_format"
    assert code_of(b"RIFF....WAVEfmt not really") == "invalid_audio"
    assert code_of(audio_bytes(2.0), MediaLimits(max_audio_seconds=1)) == "audio_too_long"
