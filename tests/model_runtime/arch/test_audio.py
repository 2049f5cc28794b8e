"""The audio tower on tiny random weights: config keys, concat-k projector, rows == layout counts,
batched encoding == a direct per-chunk computation, slots filled by sentinel value, EgoGPT key names."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_runtime import ChatTurn, ConfigError, LlavaConfig, audio_token_count, load_pretrained_model
from model_runtime.arch.layout import audio_chunk_frames, audio_chunk_token_counts
from model_runtime.constants import AUDIO_CHUNK_SAMPLES, AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX
from model_runtime.inputs import EncodedItem
from tests.conftest import random_image, random_waveform

BASE = {"architectures": ["LlavaQwenForCausalLM"], "hidden_size": 64,
        "mm_vision_tower": "google/siglip-so400m-patch14-384"}


def test_config_defaults_to_egogpt_whisper_large_v3():
    cfg = LlavaConfig.from_dict({**BASE, "speech_encoder": "/ckpt/large-v3.pt", "speech_encoder_type": "whisper",
                                 "speech_projector_type": "linear", "speech_encoder_ds_rate": 5,
                                 "speech_encoder_hidden_size": 1280})
    a = cfg.audio
    assert (a.hidden_size, a.num_hidden_layers, a.num_attention_heads, a.intermediate_size, a.num_mel_bins) == (
        1280, 32, 20, 5120, 128)
    assert (a.speech_encoder_ds_rate, a.speech_projector_hidden_size, a.speech_trim_padding) == (5, 2048, False)
    assert audio_token_count(cfg, 16000 * 30) == 300 and audio_token_count(cfg, 16000 * 31) == 600
    assert LlavaConfig.from_dict(BASE).audio is None


@pytest.mark.parametrize("extra", [
    {"speech_encoder_type": "beats"},
    {"speech_projector_type": "qformer"},
    {"speech_encoder_hidden_size": 1024},
    {"speech_encoder_ds_rate": 0},
    {"speech_encoder_config": {"d_model": 30, "encoder_attention_heads": 4}},
    {"speech_encoder_config": {"max_source_positions": 750}},
    {"speech_encoder_config": {"n_layers": 2}},
])
def test_bad_audio_keys_are_refused_naming_the_key(extra):
    with pytest.raises(ConfigError):
        LlavaConfig.from_dict({**BASE, "speech_encoder": "whisper", **extra})


def test_chunk_frames_and_trimmed_counts():
    assert audio_chunk_frames(1) == [1]
    assert audio_chunk_frames(AUDIO_CHUNK_SAMPLES) == [3000]
    assert audio_chunk_frames(AUDIO_CHUNK_SAMPLES + 161) == [3000, 2]
    cfg = LlavaConfig.from_dict({**BASE, "speech_encoder": "whisper", "speech_trim_padding": True})
    # 10 s = 1000 frames -> 500 encoder frames -> 100 rows; tiny audio keeps one row
    assert audio_chunk_token_counts(cfg, 160000) == [100]
    assert audio_chunk_token_counts(cfg, 1) == [1]
    assert audio_chunk_token_counts(cfg, AUDIO_CHUNK_SAMPLES + 160000) == [300, 100]


def test_projector_concatenates_k_frames_then_mlp(tiny_audio_model):
    projector = tiny_audio_model.model.model.speech_projector
    k = projector.k
    frames = torch.randn(2, 4 * k + 3, projector.linear1.in_features // k)  # 3 trailing frames dropped
    with torch.inference_mode():
        got = projector(frames)
        for c in range(2):
            for j in range(4):
                joined = torch.cat([frames[c, j * k + i] for i in range(k)])
                want = projector.linear2(torch.relu(projector.linear1(joined)))
                torch.testing.assert_close(got[c, j], want, rtol=0, atol=1e-6)
    assert got.shape == (2, 4, tiny_audio_model.model.config.hidden_size)


@pytest.fixture(scope="module")
def trimmed_audio_model(tiny_audio_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("trim") / "ckpt"
    shutil.copytree(tiny_audio_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config["speech_trim_padding"] = True
    (path / "config.json").write_text(json.dumps(config))
    return load_pretrained_model(str(path), dtype="float32")


def direct_rows(loaded, item) -> torch.Tensor:
    """One chunk at a time through the encoder and projector, rows kept per layout."""
    model = loaded.model.model
    counts = audio_chunk_token_counts(loaded.config, item.num_samples)
    rows = []
    for chunk, n in zip(item.data, counts, strict=True):
        frames = model.speech_encoder(chunk[None]).last_hidden_state
        rows.append(model.speech_projector(frames)[0, :n])
    return torch.cat(rows)


@pytest.mark.parametrize("trimmed", [False, True])
def test_rows_equal_layout_counts_and_direct_computation(tiny_audio_model, trimmed_audio_model, trimmed):
    loaded = trimmed_audio_model if trimmed else tiny_audio_model
    gen = torch.Generator().manual_seed(3)
    seconds = [0.05, 2.5, 29.99, 30.0] + [float(s) for s in torch.rand(2, generator=gen) * 65]
    items = [loaded.processor.process_audio(random_waveform(s, seed=i)) for i, s in enumerate(seconds)]
    with torch.inference_mode():
        encoded = loaded.model.encode_media(items)  # every chunk of every item in one encoder call
        for item, out in zip(items, encoded, strict=True):
            assert out.modality == "audio"
            assert out.features.shape == (item.num_tokens, loaded.model.config.hidden_size)
            assert item.num_tokens == audio_token_count(loaded.config, item.num_samples)
            torch.testing.assert_close(out.features, direct_rows(loaded, item), rtol=1e-5, atol=1e-5)
    counts = [i.num_tokens for i in items]
    if trimmed:
        assert counts[:4] == [1, 25, 300, 300]  # 10 rows per second at k = 5
    else:
        assert counts[:4] == [300, 300, 300, 300]


def test_slots_are_filled_by_sentinel_value_not_by_order(tiny_audio_model):
    model = tiny_audio_model.model
    p = tiny_audio_model.processor
    image = p.process_image(random_image(60, 40), single_crop=False)
    audio = p.process_audio(random_waveform(1.0))
    with torch.inference_mode():
        enc_image, enc_audio = model.encode_media([image, audio])  # request order: image, then audio
        # but the row places the audio placeholder first
        ids = [5, AUDIO_TOKEN_INDEX, 6, 7, IMAGE_TOKEN_INDEX, 8]
        embeds, mask, _ = model.prepare_inputs_for_multimodal([ids], [[enc_image, enc_audio]])
        text = model.model.embed_tokens(torch.tensor([5, 6, 7, 8]))
    n_a, n_i = audio.num_tokens, image.num_tokens
    row = embeds[0]
    assert row.shape[0] == 4 + n_a + n_i == int(mask.sum())
    torch.testing.assert_close(row[1 : 1 + n_a], enc_audio.features, rtol=0, atol=0)
    torch.testing.assert_close(row[3 + n_a : 3 + n_a + n_i], enc_image.features, rtol=0, atol=0)
    torch.testing.assert_close(row[[0, 1 + n_a, 2 + n_a, 3 + n_a + n_i]], text, rtol=0, atol=0)


def test_audio_item_without_placeholder_is_refused(tiny_audio_model):
    from model_runtime import MediaMismatchError

    d = tiny_audio_model.model.config.hidden_size
    with pytest.raises(MediaMismatchError):
        tiny_audio_model.model.prepare_inputs_for_multimodal(
            [[1, IMAGE_TOKEN_INDEX, 2]], [[EncodedItem("audio", torch.zeros(3, d))]]
        )


OPENAI_NAMES = [
    (r"embed_positions\.weight$", "positional_embedding"),
    (r"layers\.(\d+)\.self_attn\.q_proj\.", r"blocks.\1.attn.query."),
    (r"layers\.(\d+)\.self_attn\.k_proj\.", r"blocks.\1.attn.key."),
    (r"layers\.(\d+)\.self_attn\.v_proj\.", r"blocks.\1.attn.value."),
    (r"layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.out."),
    (r"layers\.(\d+)\.self_attn_layer_norm\.", r"blocks.\1.attn_ln."),
    (r"layers\.(\d+)\.fc1\.", r"blocks.\1.mlp.0."),
    (r"layers\.(\d+)\.fc2\.", r"blocks.\1.mlp.2."),
    (r"layers\.(\d+)\.final_layer_norm\.", r"blocks.\1.mlp_ln."),
    (r"\.layer_norm\.", ".ln_post."),
]


def test_egogpt_checkpoint_with_openai_whisper_names_loads(tiny_audio_checkpoint, tiny_audio_model, tmp_path):
    path = tmp_path / "egogpt-layout"
    shutil.copytree(tiny_audio_checkpoint, path)
    state = load_file(path / "model.safetensors")
    renamed = {}
    for key, value in state.items():
        if key.startswith("model.speech_encoder."):
            for pattern, target in OPENAI_NAMES:
                key = re.sub(pattern, target, key)
        renamed[key] = value
    assert "model.speech_encoder.blocks.0.attn.query.weight" in renamed
    save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    loaded = load_pretrained_model(str(path), dtype="float32").model.state_dict()
    reference = tiny_audio_model.model.state_dict()
    assert loaded.keys() == reference.keys()
    for key in reference:
        assert torch.equal(loaded[key], reference[key]), key

def test_mixed_batch_logits_equal_each_row_alone(tiny_audio_model):
    p, model = tiny_audio_model.processor, tiny_audio_model.model
    frames = [random_image(50, 30, seed=i) for i in range(3)]
    video = p.process_video(frames, [0.0, 1.0, 2.0], duration=3.0)
    track = p.process_audio(random_waveform(3.0, seed=5))  # the video's own audio track
    requests = [
        ([ChatTurn("user", "hi there")], []),
        ([ChatTurn("user", "<image>\nWhat is shown?")], [p.process_image(random_image(70, 30), single_crop=False)]),
        ([ChatTurn("user", "<video>\nWhat happens?")], [video]),
        ([ChatTurn("user", "<audio>\nWhat is said?")], [p.process_audio(random_waveform(12.0, seed=6))]),
        ([ChatTurn("user", "<video>\n<audio>\nDescribe it.")], [video, track]),
        ([ChatTurn("user", "<audio>\n<image>\nBoth?")], [p.process_audio(random_waveform(0.5)),
                                                        p.process_image(random_image(40, 90), single_crop=False)]),
    ]
    prompts = [p.build_prompt(turns, media) for turns, media in requests]
    with torch.inference_mode():
        encoded = model.encode_media([m for _, media in requests for m in media])
        it = iter(encoded)
        items = [[next(it) for _ in media] for _, media in requests]
        rows = [pr.token_ids for pr in prompts]

        def last_logits(rows, items):
            embeds, mask, pos = model.prepare_inputs_for_multimodal(rows, items, padding_side="left")
            assert mask.sum(dim=1).tolist() == [len(r) - sum(t < 0 for t in r) + sum(i.features.shape[0] for i in its)
                                                for r, its in zip(rows, items, strict=True)]
            return model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[:, -1]

        batched = last_logits(rows, items)
        solo = torch.cat([last_logits([r], [i]) for r, i in zip(rows, items, strict=True)])
    assert [pr.num_tokens for pr in prompts] == [
        len(r) - sum(t < 0 for t in r) + sum(i.features.shape[0] for i in its) for r, its in zip(rows, items, strict=True)
    ]
    torch.testing.assert_close(batched, solo, rtol=1e-5, atol=1e-5)
