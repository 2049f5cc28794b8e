"""Audio tower: 30 s log-mel chunks [C, n_mels, 3000] -> Whisper encoder frames [C, 1500, Ca].

transformers' WhisperEncoder, sized from the checkpoint's config (spec 11.3), held as
`model.speech_encoder` so its keys read `model.speech_encoder.conv1.*`,
`model.speech_encoder.layers.N.self_attn.q_proj.*`, `model.speech_encoder.layer_norm.*`.
EgoGPT/Ola checkpoints store the openai-whisper names under the same prefix;
`OPENAI_WHISPER_KEY_MAPPING` renames them at load. Knows nothing of waveforms or prompts.
"""

from __future__ import annotations

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from model_runtime.config import WHISPER_MAX_SOURCE_POSITIONS, LlavaConfig

# openai-whisper module names -> transformers' (HF models/whisper/convert_openai_to_hf.py), as
# regular expressions over checkpoint keys for `from_pretrained(key_mapping=...)`.
OPENAI_WHISPER_KEY_MAPPING = {
    r"^model\.speech_encoder\.positional_embedding$": "model.speech_encoder.embed_positions.weight",
    r"^model\.speech_encoder\.blocks\.(\d+)\.attn\.query\.": r"model.speech_encoder.layers.\1.self_attn.q_proj.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.attn\.key\.": r"model.speech_encoder.layers.\1.self_attn.k_proj.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.attn\.value\.": r"model.speech_encoder.layers.\1.self_attn.v_proj.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.attn\.out\.": r"model.speech_encoder.layers.\1.self_attn.out_proj.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.attn_ln\.": r"model.speech_encoder.layers.\1.self_attn_layer_norm.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.mlp\.0\.": r"model.speech_encoder.layers.\1.fc1.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.mlp\.2\.": r"model.speech_encoder.layers.\1.fc2.",
    r"^model\.speech_encoder\.blocks\.(\d+)\.mlp_ln\.": r"model.speech_encoder.layers.\1.final_layer_norm.",
    r"^model\.speech_encoder\.ln_post\.": "model.speech_encoder.layer_norm.",
}


def whisper_encoder_config(cfg: LlavaConfig) -> WhisperConfig:
    audio = cfg.audio
    assert audio is not None
    return WhisperConfig(
        d_model=audio.hidden_size,
        encoder_layers=audio.num_hidden_layers,
        encoder_attention_heads=audio.num_attention_heads,
        encoder_ffn_dim=audio.intermediate_size,
        num_mel_bins=audio.num_mel_bins,
        max_source_positions=WHISPER_MAX_SOURCE_POSITIONS,
        activation_function="gelu",
        scale_embedding=False,
        # transformers takes attn_implementation through **kwargs; its @strict signature omits it
        attn_implementation="sdpa",  # type: ignore[call-arg]
    )


class WhisperAudioTower(WhisperEncoder):
    """WhisperEncoder that returns its last hidden state in the dtype of its weights."""

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: [C, n_mels, 3000] log-mel chunks -> [C, 1500, Ca]
        return self(mel.to(self.dtype)).last_hidden_state


def build_audio_tower(cfg: LlavaConfig) -> WhisperAudioTower:
    if cfg.audio is None:
        raise ValueError("the checkpoint has no audio tower (no speech_encoder key)")
    return WhisperAudioTower(whisper_encoder_config(cfg))
