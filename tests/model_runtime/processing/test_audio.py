"""Log-mel chunks: shapes, values against a direct numpy computation and transformers' extractor."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

from model_runtime import InvalidMediaError, audio_token_count
from model_runtime.constants import AUDIO_CHUNK_FRAMES, AUDIO_CHUNK_SAMPLES
from model_runtime.processing.audio import log_mel_chunks, mel_filter_bank
from tests.conftest import random_waveform


def direct_log_mel(chunk: np.ndarray, n_mels: int) -> np.ndarray:
    """One 30 s chunk by hand: reflect-padded periodic-Hann frames, rfft power, mel, log10, floor."""
    assert chunk.shape == (AUDIO_CHUNK_SAMPLES,)
    x = np.pad(chunk.astype(np.float64), 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([x[i * 160 : i * 160 + 400] * window for i in range(AUDIO_CHUNK_FRAMES)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [3000, 201]
    mel = power @ mel_filter_bank(n_mels).astype(np.float64)  # [3000, n_mels]
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).T


def test_mel_filter_bank_matches_transformers():
    ours = mel_filter_bank(128)
    ref = hf_mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0,
                             max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert ours.shape == (201, 128)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)


def test_chunks_are_padded_30s_pieces_with_values_of_a_direct_computation():
    wave = random_waveform(61.5, seed=1)  # 2 full chunks + 1.5 s
    mel = log_mel_chunks(wave, 128).numpy()
    assert mel.shape == (3, 128, AUDIO_CHUNK_FRAMES)
    tail = np.zeros(AUDIO_CHUNK_SAMPLES, dtype=np.float32)
    tail[: wave.shape[0] - 2 * AUDIO_CHUNK_SAMPLES] = wave[2 * AUDIO_CHUNK_SAMPLES :]
    pieces = [wave[:AUDIO_CHUNK_SAMPLES], wave[AUDIO_CHUNK_SAMPLES : 2 * AUDIO_CHUNK_SAMPLES], tail]
    for c, piece in enumerate(pieces):
        np.testing.assert_allclose(mel[c], direct_log_mel(piece, 128), rtol=0, atol=2e-4, err_msg=f"chunk {c}")
    # each chunk is normalised on its own: a loud first chunk does not flatten the quiet tail
    assert mel[2].max() == pytest.approx(direct_log_mel(tail, 128).max(), abs=2e-4)


@pytest.mark.parametrize("seconds", [0.37, 30.0, 47.25])
def test_log_mel_equals_whisper_feature_extractor_per_chunk(seconds):
    wave = random_waveform(seconds, seed=2)
    ours = log_mel_chunks(wave, 128).numpy()
    extractor = WhisperFeatureExtractor(feature_size=128)
    chunks = [wave[i : i + AUDIO_CHUNK_SAMPLES] for i in range(0, wave.shape[0], AUDIO_CHUNK_SAMPLES)]
    ref = extractor(chunks, sampling_rate=16000, return_tensors="np").input_features
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_process_audio_counts_tokens_and_keeps_sample_count(tiny_audio_model):
    wave = random_waveform(31.0)
    item = tiny_audio_model.processor.process_audio(wave)
    assert item.modality == "audio" and item.data.shape == (2, 128, AUDIO_CHUNK_FRAMES)
    assert item.num_samples == wave.shape[0] and item.duration == pytest.approx(31.0)
    assert item.num_tokens == audio_token_count(tiny_audio_model.config, wave.shape[0]) == 600


@pytest.mark.parametrize(
    "waveform",
    [np.zeros(0, np.float32), np.zeros((2, 100), np.float32), np.array([0.0, np.nan], np.float32)],
    ids=["empty", "stereo", "nan"],
)
def test_process_audio_refuses_unusable_waveforms(tiny_audio_model, waveform):
    with pytest.raises(InvalidMediaError):
        tiny_audio_model.processor.process_audio(waveform)


def test_audio_is_refused_without_an_audio_tower(tiny_model):
    assert "audio" not in tiny_model.processor.modalities
    with pytest.raises(InvalidMediaError, match="no audio tower"):
        tiny_model.processor.process_audio(random_waveform(1.0))
