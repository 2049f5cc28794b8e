"""Our model == transformers' LlavaOnevision / LlavaNext on the same tiny random weights (spec 10.4).

transformers' model is seeded, its weights renamed to the ORIG layout (the converter's nine rules
of spec 10.2, then matched by suffix against the installed transformers' keys) and written into a
demo checkpoint that our loader reads. Both run in float32 with eager attention on identical
pixel tensors and hand-built ids (ours: one sentinel per item; transformers: N image/video ids).
Pinpoints are given to transformers as [h, w] (spec 10.3 item 2) and sizes as (H, W); logits are
compared on the common vocabulary prefix (item 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from model_runtime import load_pretrained_model
from model_runtime.arch import layout
from model_runtime.checkpoint_tools import make_demo
from model_runtime.constants import IMAGE_TOKEN_INDEX
from model_runtime.inputs import MediaInput
from tests.conftest import random_image

ATOL = 1e-5
PINPOINTS = [[42, 42], [42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]  # (w, h), ORIG order
# spec 10.2: the converter's substring rules, applied in order to every ORIG key
CONVERTER_RULES = [
    ("model.vision_tower.", ""),
    ("model.mm_projector", "multi_modal_projector"),
    ("model", "model.model"),
    ("vision_model.model", "vision_model"),
    ("lm_head", "language_model.lm_head"),
    ("model.model", "language_model.model"),
    ("multi_modal_projector.0", "multi_modal_projector.linear_1"),
    ("multi_modal_projector.2", "multi_modal_projector.linear_2"),
    ("language_model.model.image_newline", "image_newline"),
]
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings")


def converter_name(orig_key: str) -> str:
    for old, new in CONVERTER_RULES:
        orig_key = orig_key.replace(old, new)
    return orig_key


def orig_to_hf_keys(orig_keys, hf_keys) -> dict[str, str]:
    """ORIG key -> installed transformers key: the converter's name, then the shortest unique
    suffix match (restricted to the converter's top-level group when several keys share it)."""
    mapping = {}
    for orig in orig_keys:
        legacy = converter_name(orig)
        parts = legacy.split(".")
        group = parts[0]
        for start in range(len(parts)):
            suffix = ".".join(parts[start:])
            found = [k for k in hf_keys if k == suffix or k.endswith("." + suffix)]
            if len(found) > 1:
                found = [k for k in found if group in k.split(".")]
            if len(found) == 1:
                mapping[orig] = found[0]
                break
            assert not found, f"{orig}: ambiguous {found}"
        else:
            raise AssertionError(f"{orig} ({legacy}) has no transformers counterpart")
    assert sorted(mapping.values()) == sorted(hf_keys), "the mapping must be a bijection"
    return mapping


def export_to_orig(hf_model, checkpoint: Path) -> None:
    """Write transformers' weights under ORIG names over the demo checkpoint's random ones."""
    ours = load_pretrained_model(str(checkpoint), dtype="float32").model.state_dict()
    hf_state = hf_model.state_dict()
    mapping = orig_to_hf_keys(list(ours), list(hf_state))
    state = {orig: hf_state[hf].clone().contiguous() for orig, hf in mapping.items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ours.items()}
    save_file(state, checkpoint / "model.safetensors", metadata={"format": "pt"})


def text_config(raw: dict, cls):
    return cls(**{k: raw[k] for k in TEXT_KEYS if k in raw})


class Pair:
    """Our loaded model and transformers' reference on the same weights."""

    def __init__(self, checkpoint: Path, hf_model):
        export_to_orig(hf_model, checkpoint)
        self.loaded = load_pretrained_model(str(checkpoint), dtype="float32")
        self.ours = self.loaded.model
        self.ours.set_attn_implementation("eager")
        self.hf = hf_model.eval()
        raw = json.loads((checkpoint / "config.json").read_text())
        self.image_id, self.video_id = raw["image_token_index"], raw.get("video_token_index")

    def hf_embeds(self, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' logits and the inputs_embeds its decoder received."""
        captured = {}
        decoder = self.hf.model.language_model

        def hook(_module, _args, kwargs):
            captured["embeds"] = kwargs["inputs_embeds"]

        handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            logits = self.hf(**inputs).logits
        finally:
            handle.remove()
        return logits, captured["embeds"]

    def our_logits(self, rows, items, padding_side="left"):
        embeds, mask, positions = self.ours.prepare_inputs_for_multimodal(rows, items, padding_side=padding_side)
        logits = self.ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        return logits, embeds, mask, positions


def close(a: torch.Tensor, b: torch.Tensor, record: dict, name: str) -> None:
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    record[name] = diff
    assert a.shape == b.shape, (name, a.shape, b.shape)
    assert diff <= ATOL, f"{name}: max abs difference {diff:.3g}"


def common_vocab(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = min(a.shape[-1], b.shape[-1])
    return a[..., :width], b[..., :width]


def text_ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 380, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def onevision(tmp_path_factory) -> Pair:
    checkpoint = make_demo("tiny", tmp_path_factory.mktemp("ov") / "ckpt", seed=0)
    raw = json.loads((checkpoint / "config.json").read_text())
    vision = raw["mm_vision_tower_config"]
    config = LlavaOnevisionConfig(
        text_config=text_config(raw, Qwen2Config),
        vision_config=SiglipVisionConfig(
            hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_hidden_layers"] - 1,  # ORIG's kept layers
            num_attention_heads=vision["num_attention_heads"], image_size=vision["image_size"],
            patch_size=vision["patch_size"], layer_norm_eps=vision["layer_norm_eps"], vision_use_head=False),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio=raw["image_aspect_ratio"],
        image_grid_pinpoints=[[h, w] for w, h in raw["image_grid_pinpoints"]],
        image_token_id=raw["image_token_index"], video_token_id=raw["image_token_index"] + 1,
        projector_hidden_act="gelu", multimodal_projector_bias=True, attn_implementation="eager",
    )
    raw["video_token_index"] = config.video_token_id
    (checkpoint / "config.json").write_text(json.dumps(raw))
    torch.manual_seed(1)
    return Pair(checkpoint, LlavaOnevisionForConditionalGeneration(config))


def next_pair(tmp_path_factory, name: str, clip: dict, overrides: dict, feature_layer) -> Pair:
    clip = {"kind": "clip", "intermediate_size": 64, "num_attention_heads": 2, "image_size": 42, "patch_size": 14,
            **clip}
    checkpoint = make_demo("tiny", tmp_path_factory.mktemp(name) / "ckpt", seed=0, overrides={
        "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_tower_config": clip, "image_aspect_ratio": "anyres", "conversation_template": "chatml",
        "image_grid_pinpoints": PINPOINTS, **overrides,
    })
    raw = json.loads((checkpoint / "config.json").read_text())
    config = LlavaNextConfig(
        text_config=text_config(raw, LlamaConfig),
        vision_config=CLIPVisionConfig(**{k: v for k, v in clip.items() if k != "kind"}),
        vision_feature_layer=feature_layer, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[h, w] for w, h in PINPOINTS], image_token_index=raw["image_token_index"],
        projector_hidden_act="gelu", multimodal_projector_bias=True, attn_implementation="eager",
    )
    torch.manual_seed(2)
    return Pair(checkpoint, LlavaNextForConditionalGeneration(config))


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory) -> Pair:
    """LLaVA-1.6-vicuna's shape: Llama LM, CLIP layer -2 without CLS, anyres + spatial_unpad."""
    return next_pair(tmp_path_factory, "next", {"hidden_size": 32, "num_hidden_layers": 3},
                     {"mm_hidden_size": 32}, -2)


@pytest.fixture(scope="module")
def llava_next_slice(tmp_path_factory) -> Pair:
    """CLIP slice_m25811_f6_patch == transformers' list of feature layers [-2, -5, -8, -11, 6]."""
    return next_pair(tmp_path_factory, "slice", {"hidden_size": 16, "num_hidden_layers": 12},
                     {"mm_hidden_size": 80, "mm_vision_select_feature": "slice_m25811_f6_patch"},
                     [-2, -5, -8, -11, 6])


IMAGE_SIZES = {"wide": (120, 37), "tall": (40, 111), "tiny": (9, 6), "exact": (84, 84)}
MEASURED: dict[str, float] = {}  # case -> max abs difference (bench/reference_diffs.py prints them)


def image_case(pair: Pair, sizes, single_crop: bool, hf_extra: dict, seed: int = 0):
    """Images (one row) through both models; returns (our rows, hf features, our logits, hf logits, embeds)."""
    processor = pair.loaded.processor
    media = [processor.process_image(random_image(*s, seed=seed + i), single_crop=single_crop)
             for i, s in enumerate(sizes)]
    prefix, middle, suffix = text_ids(5, seed), text_ids(3, seed + 1), text_ids(4, seed + 2)
    rows = [prefix]
    hf_ids = list(prefix)
    for i, m in enumerate(media):
        rows += [[IMAGE_TOKEN_INDEX], middle if i + 1 < len(media) else suffix]
        hf_ids += [pair.image_id] * m.num_tokens + (middle if i + 1 < len(media) else suffix)
    ids = [t for part in rows for t in part]
    max_crops = max(m.data.shape[0] for m in media)
    pixels = torch.zeros(len(media), max_crops, *media[0].data.shape[1:])
    for i, m in enumerate(media):
        pixels[i, : m.data.shape[0]] = m.data
    image_sizes = torch.tensor([[m.image_size[1], m.image_size[0]] for m in media])  # (H, W)
    with torch.inference_mode():
        items = pair.ours.encode_media(media)
        hf_features = pair.hf.model.get_image_features(
            pixel_values=pixels, image_sizes=image_sizes, **hf_extra).pooler_output
        ours, embeds, _, _ = pair.our_logits([ids], [items])
        theirs, hf_embeds = pair.hf_embeds(input_ids=torch.tensor([hf_ids]), pixel_values=pixels,
                                           image_sizes=image_sizes, **hf_extra)
    return items, hf_features, ours, theirs, embeds, hf_embeds


def check_images(pair: Pair, name: str, sizes, single_crop: bool, hf_extra: dict) -> None:
    items, hf_features, ours, theirs, embeds, hf_embeds = image_case(pair, sizes, single_crop, hf_extra)
    assert len(hf_features) == len(items)
    for i, (item, feature) in enumerate(zip(items, hf_features, strict=True)):
        close(item.features, feature, MEASURED, f"{name} features[{i}]")
    close(embeds, hf_embeds, MEASURED, f"{name} embeds")
    close(*common_vocab(ours, theirs), MEASURED, f"{name} logits")


@pytest.mark.parametrize("kind", list(IMAGE_SIZES))
def test_onevision_single_image(onevision, kind):
    size = IMAGE_SIZES[kind]
    assert layout.anyres_grid(onevision.loaded.config, size)  # a grid exists for every case
    check_images(onevision, f"onevision {kind}", [size], False, {"batch_num_images": torch.tensor([1])})


def test_onevision_anyres_max_cap_fires(onevision):
    # a 2x2 grid (6x6 map) under anyres_max_1 is shrunk by the bilinear cap in both models
    cfg = onevision.loaded.config
    assert layout.anyres_grid(cfg, IMAGE_SIZES["exact"]) == (2, 2)
    assert layout.unpadded_map_shape(cfg, IMAGE_SIZES["exact"]) == (3, 3)


def test_onevision_multi_image_pad(onevision):
    check_images(onevision, "onevision multi-image", [(70, 30), (33, 90)], True,
                 {"batch_num_images": torch.tensor([2])})


def test_onevision_video(onevision):
    pair = onevision
    frames = pair.loaded.processor.images.to_tensor([random_image(50, 40, seed=s) for s in range(3)])
    media = MediaInput("video", frames, layout.video_token_count(pair.loaded.config, 3))
    assert media.num_tokens == 3 * 2 * 2 + 1  # P = 3: bilinear ceil(3/2) = 2, one newline
    prefix, suffix = text_ids(4, 7), text_ids(6, 8)
    with torch.inference_mode():
        items = pair.ours.encode_media([media])
        hf_features = pair.hf.model.get_video_features(
            pixel_values_videos=frames[None], vision_feature_layer=-1, vision_feature_select_strategy="full",
        ).pooler_output
        ours, embeds, _, _ = pair.our_logits([prefix + [IMAGE_TOKEN_INDEX] + suffix], [items])
        theirs, hf_embeds = pair.hf_embeds(
            input_ids=torch.tensor([prefix + [pair.video_id] * media.num_tokens + suffix]),
            pixel_values_videos=frames[None])
    close(items[0].features, hf_features[0], MEASURED, "onevision video features")
    close(embeds, hf_embeds, MEASURED, "onevision video embeds")
    close(*common_vocab(ours, theirs), MEASURED, "onevision video logits")


@pytest.mark.parametrize("model", ["onevision", "llava_next"])
def test_text_only(request, model):
    pair = request.getfixturevalue(model)
    ids = text_ids(9, 11)
    with torch.inference_mode():
        ours, embeds, _, _ = pair.our_logits([ids], [[]])
        theirs, hf_embeds = pair.hf_embeds(input_ids=torch.tensor([ids]))
    close(embeds, hf_embeds, MEASURED, f"{model} text-only embeds")
    close(*common_vocab(ours, theirs), MEASURED, f"{model} text-only logits")


@pytest.mark.parametrize("model", ["onevision", "llava_next"])
def test_left_padded_batch_of_two(request, model):
    pair = request.getfixturevalue(model)
    image = pair.loaded.processor.process_image(random_image(60, 45, seed=3), single_crop=False)
    long_row = text_ids(4, 12) + [IMAGE_TOKEN_INDEX] + text_ids(5, 13)
    short_row = text_ids(6, 14)
    hf_long = text_ids(4, 12) + [pair.image_id] * image.num_tokens + text_ids(5, 13)
    width = len(hf_long)
    pad = width - len(short_row)
    hf_ids = torch.tensor([hf_long, [0] * pad + short_row])
    hf_mask = torch.tensor([[1] * width, [0] * pad + [1] * len(short_row)])
    hf_positions = (hf_mask.cumsum(1) - 1).clamp(min=0)
    extra = {"batch_num_images": torch.tensor([1])} if model == "onevision" else {}
    with torch.inference_mode():
        items = pair.ours.encode_media([image])
        ours, embeds, mask, positions = pair.our_logits([long_row, short_row], [items, []])
        theirs, hf_embeds = pair.hf_embeds(
            input_ids=hf_ids, attention_mask=hf_mask, position_ids=hf_positions, pixel_values=image.data[None],
            image_sizes=torch.tensor([[image.image_size[1], image.image_size[0]]]), **extra)
    assert torch.equal(mask, hf_mask) and torch.equal(positions, hf_positions)
    real = mask.bool()
    close(embeds[real], hf_embeds[real], MEASURED, f"{model} batch-2 embeds")
    close(*common_vocab(ours[real], theirs[real]), MEASURED, f"{model} batch-2 logits")


@pytest.mark.parametrize("kind", list(IMAGE_SIZES))
def test_llava_next_single_image(llava_next, kind):
    check_images(llava_next, f"llava-next {kind}", [IMAGE_SIZES[kind]], False, {})


def test_llava_next_multi_image_anyres_each(llava_next):
    # transformers' LlavaNext has no pad mode: each image of the row goes through anyres, in both
    check_images(llava_next, "llava-next multi-image", [(100, 50), (20, 61)], False, {})


def test_llava_next_clip_slice_features(llava_next_slice):
    check_images(llava_next_slice, "llava-next slice_m25811_f6", [IMAGE_SIZES["wide"]], False, {})
