"""Audio preprocessing: 16 kHz mono float32 waveform -> Whisper log-mel chunks [C, n_mels, 3000].

The waveform is cut into 30 s chunks, the last one padded with silence, and each chunk gets
Whisper's log-mel spectrogram on its own (openai/whisper whisper/audio.py log_mel_spectrogram
after pad_or_trim; transformers' WhisperFeatureExtractor computes the same): a periodic Hann STFT
of 400 samples every 160, power, a Slaney mel filter bank (0-8 kHz), log10 clamped at 1e-10,
floored at the chunk's maximum - 8, then (x + 4) / 4. Takes decoded samples; knows nothing of
files, containers or resampling.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch

from model_runtime.constants import (
    AUDIO_CHUNK_SAMPLES,
    AUDIO_HOP_LENGTH,
    AUDIO_N_FFT,
    AUDIO_SAMPLE_RATE,
)

MEL_MAX_HZ = 8000.0  # Nyquist of 16 kHz
LOG_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the chunk's loudest bin (80 dB)


def hz_to_mel(hz: npt.ArrayLike) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel / 200 Hz) up to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: npt.ArrayLike) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, log, linear)


@lru_cache(maxsize=4)
def mel_filter_bank(num_mel_bins: int) -> np.ndarray:
    """Triangular Slaney-normalised filters [1 + n_fft // 2, num_mel_bins] (float32) over 0-8 kHz."""
    fft_hz = np.linspace(0.0, AUDIO_SAMPLE_RATE / 2, 1 + AUDIO_N_FFT // 2)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(MEL_MAX_HZ), num_mel_bins + 2))
    widths = np.diff(edges_hz)  # [num_mel_bins + 1]
    slopes = edges_hz[:, None] - fft_hz[None, :]  # [num_mel_bins + 2, num_freqs]
    rising = -slopes[:-2] / widths[:-1, None]
    falling = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))  # [num_mel_bins, num_freqs]
    filters *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    return np.ascontiguousarray(filters.T.astype(np.float32))


def num_audio_chunks(num_samples: int) -> int:
    return max(1, math.ceil(num_samples / AUDIO_CHUNK_SAMPLES))


def log_mel_chunks(waveform: np.ndarray, num_mel_bins: int) -> torch.Tensor:
    """waveform [N] float32 at 16 kHz -> log-mel [C, num_mel_bins, 3000] float32, C = ceil(N / 480000)."""
    num_chunks = num_audio_chunks(waveform.shape[0])
    padded = np.zeros(num_chunks * AUDIO_CHUNK_SAMPLES, dtype=np.float32)
    padded[: waveform.shape[0]] = waveform
    chunks = torch.from_numpy(padded).view(num_chunks, AUDIO_CHUNK_SAMPLES)
    window = torch.hann_window(AUDIO_N_FFT)
    stft = torch.stft(chunks, AUDIO_N_FFT, AUDIO_HOP_LENGTH, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # [C, 201, 3000]; the frame past the end is dropped
    filters = torch.from_numpy(mel_filter_bank(num_mel_bins))  # [201, n_mels]
    mel = filters.T @ power  # [C, n_mels, 3000]
    log = torch.clamp(mel, min=LOG_FLOOR).log10()
    peak = log.amax(dim=(1, 2), keepdim=True)
    log = torch.maximum(log, peak - DYNAMIC_RANGE)
    return (log + 4.0) / 4.0
