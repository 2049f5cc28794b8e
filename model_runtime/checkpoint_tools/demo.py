"""Demo checkpoints: the real architecture with RANDOM weights, in the original LLaVA-OneVision layout.

`make_demo(size, out)` writes config.json (ORIG `mm_*` keys), safetensors weights under ORIG key
names, a byte-level BPE tokenizer trained locally with `tokenizers` (ChatML specials plus the
`<image>`, `<video>`, `<audio>` placeholders), a chat template and a model card saying the weights
are random. Same seed -> same files. Sizes:
  tiny       unit tests: P = 3 crops of 42 px, 2-layer LM, builds and runs in well under a second
  small      `make serve`: OneVision geometry (384 px crops, 729 tokens each, 36 pinpoints,
             anyres_max_9) on a narrow 4-layer LM, with a small Whisper audio tower
  realistic  the exact dimensions of llava-onevision-qwen2-0.5b-ov (Qwen2-0.5B + SigLIP so400m
             with 26 kept layers) for benchmarks
`audio=True/False` adds or leaves out the audio tower (EgoGPT's `speech_*` keys: a Whisper encoder
on 128-bin log-mel, concat-5 projector; Whisper large-v3 dimensions for `realistic`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from model_runtime.arch.language import LANGUAGE_MODELS
from model_runtime.config import LlavaConfig

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<audio>")
# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation runs, newlines)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>\n"
    "{% elif part['type'] == 'video' or part['type'] == 'video_url' %}<video>\n"
    "{% elif part['type'] == 'audio' or part['type'] == 'input_audio' %}<audio>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OV_PINPOINTS = "(1x1),...,(6x6)"


@dataclass(frozen=True)
class DemoSpec:
    """Dimensions of one demo size."""

    bpe_vocab: int  # byte-level BPE entries before the specials
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    tie_embeddings: bool
    dtype: str
    vision: dict[str, Any] | None  # None: ORIG's hard-coded SigLIP so400m (no extension key)
    pinpoints: Any
    aspect_ratio: str
    max_position_embeddings: int = 32768
    audio: dict[str, Any] | None = None  # Whisper encoder dims (+ projector width); None: large-v3, no extension key
    has_audio: bool = False  # whether make_demo adds the audio tower unless told otherwise


DEMO_SPECS = {
    "tiny": DemoSpec(
        bpe_vocab=384, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
        tie_embeddings=False, dtype="float32",
        vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                "image_size": 42, "patch_size": 14, "layer_norm_eps": 1e-6},
        pinpoints=[[42, 42], [42, 84], [84, 42], [84, 84], [126, 42], [42, 126]],
        aspect_ratio="anyres_max_1", max_position_embeddings=4096,
        audio={"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
               "num_mel_bins": 128, "projector_hidden_size": 32},
    ),
    "small": DemoSpec(
        bpe_vocab=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
        tie_embeddings=False, dtype="bfloat16",
        vision={"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
                "image_size": 384, "patch_size": 14, "layer_norm_eps": 1e-6},
        pinpoints=OV_PINPOINTS, aspect_ratio="anyres_max_9",
        audio={"d_model": 128, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 256,
               "num_mel_bins": 128, "projector_hidden_size": 256},
        has_audio=True,
    ),
    "realistic": DemoSpec(
        bpe_vocab=151643, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
        tie_embeddings=True, dtype="bfloat16", vision=None, pinpoints=OV_PINPOINTS, aspect_ratio="anyres_max_9",
    ),
}
TRAINED_BPE_MAX = 8192  # larger vocabularies are extended with synthetic merges (see _extend_bpe)
SHARD_BYTES = 1 << 30

MODEL_CARD = """# llava-serve demo checkpoint ({size})

**The weights are RANDOM. The text this model produces is meaningless.**

Written by `llava-serve make-demo --size {size}` (seed {seed}) to exercise llava-serve end to end:
the LLaVA-OneVision architecture (Qwen2 language model, SigLIP vision tower, mlp2x_gelu projector,
anyres_max + spatial_unpad + image_newline) in the original checkpoint layout, with a byte-level
BPE tokenizer trained locally on synthetic text. Use it to try the API, measure speed and run
tests; serve a real checkpoint (e.g. lmms-lab/llava-onevision-qwen2-0.5b-ov) for real answers.
"""
AUDIO_CARD = """
It also has an audio tower: a Whisper encoder on 30 s chunks of 128-bin log-mel and a concat-5
projector (EgoGPT's `speech_*` config keys), so `input_audio` parts and videos' audio tracks work.
"""


def make_demo(
    size: str, out: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None, audio: bool | None = None,
    max_shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Write a demo checkpoint; `overrides` replace config.json keys (e.g. a Llama LM via
    `architectures`, a CLIP tower via `mm_vision_tower` + `mm_vision_tower_config`, other merge
    modes, `torch_dtype`) and the random weights follow the resulting architecture. `audio` adds or
    leaves out the audio tower (None: the size's default, `DemoSpec.has_audio`). `max_shard_bytes`
    splits the weights into shards of at most that size (checkpoint-tools tests)."""
    if size not in DEMO_SPECS:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(DEMO_SPECS)}")
    spec = DEMO_SPECS[size]
    if audio is not None:
        spec = replace(spec, has_audio=audio)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.bpe_vocab, seed)
    vocab_size = tokenizer.get_vocab_size()
    save_tokenizer(tokenizer, out)
    config = {**demo_config(spec, vocab_size, tokenizer), **(overrides or {})}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": [config["eos_token_id"],
                    tokenizer.token_to_id("<|endoftext|>")], "pad_token_id": tokenizer.token_to_id("<|endoftext|>")},
                   indent=2) + "\n"
    )
    save_random_weights(config, spec, out, seed, max_shard_bytes)
    card = MODEL_CARD.format(size=size, seed=seed)
    if spec.has_audio:
        card += AUDIO_CARD
    if overrides:
        card += f"\nConfig keys changed from the {size} demo: {', '.join(sorted(overrides))}.\n"
    (out / "README.md").write_text(card)
    return out


def demo_config(spec: DemoSpec, vocab_size: int, tokenizer: Tokenizer) -> dict[str, Any]:
    """config.json in the layout of lmms-lab/llava-onevision-qwen2-*-ov (ORIG keys)."""
    config: dict[str, Any] = {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava",
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "image_aspect_ratio": spec.aspect_ratio,
        "image_grid_pinpoints": spec.pinpoints,
        "image_token_index": tokenizer.token_to_id("<image>"),
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_layers,
        "mm_hidden_size": (spec.vision or {}).get("hidden_size", 1152),
        "mm_newline_position": "one_token",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_spatial_pool_mode": "bilinear",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "pos_skipping_range": 4096,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_embeddings,
        "tokenizer_model_max_length": spec.max_position_embeddings,
        "tokenizer_padding_side": "right",
        "torch_dtype": spec.dtype,
        "use_cache": True,
        "use_mm_proj": True,
        "use_pos_skipping": False,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "llava_serve_demo": "random weights: generated text is meaningless",
    }
    if spec.vision is not None:
        config["mm_vision_tower_config"] = {"kind": "siglip", **spec.vision}
    if spec.has_audio:
        config.update(demo_audio_config(spec))
    return config


def demo_audio_config(spec: DemoSpec) -> dict[str, Any]:
    """EgoGPT's `speech_*` keys; small towers state their dimensions in `speech_encoder_config`."""
    dims = dict(spec.audio or {})
    projector_hidden = dims.pop("projector_hidden_size", 2048)
    config: dict[str, Any] = {
        "speech_encoder": "openai/whisper-large-v3",
        "speech_encoder_type": "whisper",
        "speech_projector_type": "linear",
        "speech_encoder_ds_rate": 5,
        "speech_encoder_hidden_size": dims.get("d_model", 1280),
        "speech_projector_hidden_size": projector_hidden,
    }
    if dims:
        config["speech_encoder"] = "random-whisper-encoder"
        config["speech_encoder_config"] = dims
    return config


def save_random_weights(
    config: dict[str, Any], spec: DemoSpec, out: Path, seed: int, max_shard_bytes: int = SHARD_BYTES
) -> None:
    torch.manual_seed(seed)
    config_cls, model_cls = LANGUAGE_MODELS[LlavaConfig.from_dict(config).language]
    hf_config = config_cls(**{k: v for k, v in config.items() if k != "model_type"})
    dtype = getattr(torch, config["torch_dtype"])  # spec.dtype unless overridden
    model = model_cls(hf_config)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:  # spec.tie_embeddings unless overridden
        state.pop("lm_head.weight")  # tied 0.5B checkpoints ship no lm_head (spec 9.1)
    del model
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = state[name]
        used += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# -- tokenizer -------------------------------------------------------------------------------
def build_tokenizer(bpe_vocab: int, seed: int) -> Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on synthetic text, + the specials.

    Every id decodes: BPE entries are byte strings and the specials are added tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(bpe_vocab, TRAINED_BPE_MAX),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(seed), trainer)
    if tokenizer.get_vocab_size() < bpe_vocab:
        tokenizer = _extend_bpe(tokenizer, bpe_vocab)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _extend_bpe(tokenizer: Tokenizer, bpe_vocab: int) -> Tokenizer:
    """Append deterministic synthetic merges (pairs of existing entries) up to `bpe_vocab` entries."""
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list = data["model"]["merges"]
    by_id = sorted(vocab, key=vocab.__getitem__)
    alphabet = by_id[:256]
    i = 0
    while len(vocab) < bpe_vocab:
        left = by_id[i % len(by_id)]
        for right in alphabet:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append([left, right])
                by_id.append(merged)
                if len(vocab) >= bpe_vocab:
                    break
        i += 1
    return Tokenizer.from_str(json.dumps(data))


def synthetic_corpus(seed: int, num_lines: int = 6000):
    """Deterministic pseudo-English: Zipf-distributed invented words, digits, punctuation, code."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "sh", "st", "w", "pl", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    words = sorted({
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        for _ in range(3000)
    })
    weights = [1 / (rank + 1) for rank in range(len(words))]
    common = ["the", "a", "is", "of", "and", "to", "in", "image", "video", "audio", "what", "shown", "this",
              "describe", "picture", "you", "assistant", "user", "system", "helpful"]
    for _ in range(num_lines):
        n = rng.randint(4, 18)
        picked = rng.choices(words, weights=weights, k=n) + rng.sample(common, k=3)
        rng.shuffle(picked)
        line = " ".join(picked).capitalize()
        roll = rng.random()
        if roll < 0.15:
            line += f" {rng.randint(0, 99999)}"
        if roll > 0.9:
            line = f"def {picked[0]}({picked[1]}): return {picked[2]}[{rng.randint(0, 9)}]"
        yield line + rng.choice([".", "?", "!", ",", ":", ";", "\n"])


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok, "lstrip": False, "rstrip": False, "normalized": False,
            "single_word": False, "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>", "<video>", "<audio>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
