"""llava-hf LLaVA-1.5 (`llava`) and LLaVA-NeXT-Video (`llava_next_video`) checkpoints, saved by
transformers' own classes on tiny random weights, are served with transformers' logits (text, one
image, one video) and, for `llava`, transformers' own pixels where its preprocessor_config.json and
ORIG agree; what cannot be served is refused naming the key; an ORIG LLaVA-1.5-style checkpoint
exports to the `llava` layout and loads back with the same logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime import ConfigError, LlavaConfig, load_pretrained_model
from model_runtime.checkpoint.hf_layout import llava_aspect_ratio, orig_config
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.hf_export import export_hf
from testkit.checkpoints import logits_of
from tests.conftest import random_image
from tests.model_runtime.checkpoint.conftest import load_both, logit_gap

TOLERANCE = 1e-4  # float32, eager attention on both sides
SIZES = ((160, 90), (37, 120))  # (w, h): wide, tall
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
TINY_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 42,
    "patch_size": 14,
}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A tiny ORIG checkpoint: its tokenizer (with <image> and <video>) and LM dimensions."""
    return make_demo("tiny", tmp_path_factory.mktemp("orig") / "ckpt", seed=3, audio=False)


def text_config(original: Path, language: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    raw = json.loads((original / "config.json").read_text())
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[language]
    return cls(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw["num_key_value_heads"],
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    )


def token_id(original: Path, token: str) -> int:
    added = json.loads((original / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in added if t["content"] == token)


def save_hf(model_cls, config, folder: Path, original: Path, preprocessor: dict | None = None) -> Path:
    """`model_cls(config)` on seeded random weights, saved by transformers, with the demo tokenizer."""
    torch.manual_seed(4)
    model_cls(config).save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(original / name, folder / name)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def clip_preprocessor(**extra) -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 42},
        "do_center_crop": True,
        "crop_size": {"height": 42, "width": 42},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        **extra,
    }


# language, tower, strategy, feature layer, preprocessor_config.json -> image_aspect_ratio served
LLAVA_CASES = {
    "llama-clip-no-file": ("llama", "clip", "default", -2, None, "pad"),
    "llama-clip-hub-file": ("llama", "clip", "default", -2, clip_preprocessor(), "pad"),
    "mistral-clip-cls-do_pad-false": (
        "mistral",
        "clip",
        "full",
        -1,
        clip_preprocessor(do_pad=False),
        "square",
    ),
    "qwen2-siglip-do_pad-true": (
        "qwen2",
        "siglip",
        "full",
        -1,
        {
            **clip_preprocessor(do_pad=True),
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
            "size": {"height": 42, "width": 42},
            "do_center_crop": False,
        },
        "pad",
    ),
}


def build_llava(original: Path, folder: Path, case: str) -> Path:
    from transformers import CLIPVisionConfig, LlavaForConditionalGeneration, SiglipVisionConfig
    from transformers import LlavaConfig as HfLlavaConfig

    language, tower, strategy, layer, preprocessor, _ = LLAVA_CASES[case]
    vision = (
        CLIPVisionConfig(**TINY_TOWER)
        if tower == "clip"
        else SiglipVisionConfig(**TINY_TOWER, vision_use_head=False)
    )
    config = HfLlavaConfig(
        text_config=text_config(original, language),
        vision_config=vision,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_token_index=token_id(original, "<image>"),
        projector_hidden_act="gelu",
    )
    return save_hf(LlavaForConditionalGeneration, config, folder, original, preprocessor)


@pytest.mark.parametrize("case", list(LLAVA_CASES))
def test_llava_loads_with_transformers_logits(original, tmp_path, case):
    """LLaVA-1.5's llava-hf shape: one crop per image, no newline; our logits are transformers' on
    the same ids and pixels (text, wide and tall images), with ORIG's pad unless the file says
    do_pad false."""
    from transformers import LlavaForConditionalGeneration

    language, tower, strategy, _, _, aspect = LLAVA_CASES[case]
    folder = build_llava(original, tmp_path / case, case)
    hf, ours = load_both(folder, LlavaForConditionalGeneration)
    cfg = ours.config
    assert (cfg.language, cfg.vision.kind, cfg.image_aspect_ratio) == (language, tower, aspect)
    assert cfg.mm_patch_merge_type == "flat" and not hasattr(ours.model.model, "image_newline")
    assert cfg.raw["llava_hf_layout"] == "llava"
    assert logit_gap(hf, ours, "text") <= TOLERANCE
    for size in SIZES:
        assert logit_gap(hf, ours, "image", size) <= TOLERANCE
    num_tokens = ours.processor.process_image(random_image(*SIZES[0]), single_crop=False).num_tokens
    assert num_tokens == 9 + (
        1 if tower == "clip" and strategy == "full" else 0
    )  # P = 3, CLS kept with "full"


@pytest.mark.parametrize("do_pad", [True, False])
def test_llava_pixels_are_transformers_where_the_file_says_do_pad(original, tmp_path, do_pad):
    """An explicit do_pad is followed: our pixels equal transformers' LlavaImageProcessor's on the
    same folder (pad: mean-colour square; no pad: shortest side + centre crop)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    case = "qwen2-siglip-do_pad-true" if do_pad else "mistral-clip-cls-do_pad-false"
    folder = build_llava(original, tmp_path / case, case)
    ours = load_pretrained_model(str(folder), dtype="float32")
    theirs = LlavaImageProcessorPil.from_pretrained(str(folder))
    for size in (*SIZES, (50, 50)):
        image = random_image(*size, seed=2)
        pixels = torch.as_tensor(np.asarray(theirs(image, return_tensors="pt")["pixel_values"]))
        assert torch.equal(ours.processor.process_image(image, single_crop=False).data, pixels)


def test_llava_without_do_pad_serves_orig_pad_not_the_centre_crop(original, tmp_path):
    """The hub's LLaVA-1.5 files name CLIPImageProcessor without do_pad: transformers centre-crops,
    ORIG (what the weights were trained with) pads; we pad, and the pixels differ on purpose."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    folder = build_llava(original, tmp_path / "hub", "llama-clip-hub-file")
    ours = load_pretrained_model(str(folder), dtype="float32")
    image = random_image(*SIZES[0], seed=2)
    mine = ours.processor.process_image(image, single_crop=False).data
    crop = LlavaImageProcessorPil.from_pretrained(str(folder))
    pad = LlavaImageProcessorPil.from_pretrained(str(folder), do_pad=True)
    assert torch.equal(mine, torch.as_tensor(np.asarray(pad(image, return_tensors="pt")["pixel_values"])))
    assert not torch.equal(
        mine, torch.as_tensor(np.asarray(crop(image, return_tensors="pt")["pixel_values"]))
    )


def build_next_video(original: Path, folder: Path, mode: str, stride: int, language: str = "llama") -> Path:
    from transformers import CLIPVisionConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    config = LlavaNextVideoConfig(
        text_config=text_config(original, language),
        vision_config=CLIPVisionConfig(
            **{**TINY_TOWER, "image_size": 84}
        ),  # P = 6: pooled 3 (stride 2), 2 (stride 3)
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[84, 84], [84, 168], [168, 84], [168, 168]],  # [h, w]
        image_token_index=token_id(original, "<image>"),
        video_token_index=token_id(original, "<video>"),
        spatial_pool_mode=mode,
        spatial_pool_stride=stride,
        projector_hidden_act="gelu",
    )
    return save_hf(LlavaNextVideoForConditionalGeneration, config, folder, original)


@pytest.mark.parametrize(("mode", "stride", "language"), [("average", 2, "llama"), ("max", 3, "mistral")])
def test_llava_next_video_loads_with_transformers_logits(original, tmp_path, mode, stride, language):
    """LLaVA-NeXT-Video: images as LLaVA-NeXT (anyres, unpad, newline per row); each video frame pooled
    BEFORE the projector with spatial_pool_mode / stride, no newline: transformers' logits on text,
    wide and tall images and a 3-frame video, with its token counts."""
    from transformers import LlavaNextVideoForConditionalGeneration

    folder = build_next_video(original, tmp_path / mode, mode, stride, language)
    hf, ours = load_both(folder, LlavaNextVideoForConditionalGeneration)
    cfg = ours.config
    assert cfg.pools_video_before_projector and cfg.mm_newline_position == "no_token"
    assert (cfg.mm_spatial_pool_mode, cfg.mm_spatial_pool_stride) == (mode, stride)
    assert "video" in ours.processor.modalities
    assert logit_gap(hf, ours, "text") <= TOLERANCE
    for size in SIZES:
        assert logit_gap(hf, ours, "image", size) <= TOLERANCE
    assert logit_gap(hf, ours, "video", (60, 45), num_frames=3) <= TOLERANCE
    frames = [random_image(60, 45, seed=i) for i in range(3)]
    video = ours.processor.process_video(frames, [0.0, 1.0, 2.0], 3.0)
    assert video.num_tokens == 3 * (6 // stride) ** 2
    # the engine's unit-by-unit encoding gives the same rows as encode_media
    job = ours.model.start_encoding(video, max_crops=2)
    job.run(job.num_units)
    with torch.inference_mode():
        assert torch.allclose(job.result().features, ours.model.encode_media([video])[0].features, atol=1e-6)


def test_video_pool_position_is_checked():
    raw = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "hidden_size": 64,
        "mm_vision_tower": "openai/clip-vit-large-patch14",
        "mm_vision_tower_config": {"kind": "clip", **TINY_TOWER},
        "mm_projector_type": "mlp2x_gelu",
    }
    assert not LlavaConfig.from_dict({**raw, "mm_spatial_pool_mode": "average"}).pools_video_before_projector
    with pytest.raises(ConfigError, match="video_pool_position='before_projector'.*'bilinear'"):
        LlavaConfig.from_dict(
            {**raw, "video_pool_position": "before_projector", "mm_spatial_pool_mode": "bilinear"}
        )
    with pytest.raises(ConfigError, match="video_pool_position='inside'"):
        LlavaConfig.from_dict({**raw, "video_pool_position": "inside", "mm_spatial_pool_mode": "average"})


HF_LLAVA = {
    "model_type": "llava",
    "architectures": ["LlavaForConditionalGeneration"],
    "text_config": {"model_type": "llama"},
    "vision_config": {"model_type": "clip_vision_model"},
}
HF_NEXT_VIDEO = {
    **HF_LLAVA,
    "model_type": "llava_next_video",
    "architectures": ["LlavaNextVideoForConditionalGeneration"],
}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({**HF_NEXT_VIDEO, "spatial_pool_mode": "conv"}, "spatial_pool_mode='conv'"),
        ({**HF_NEXT_VIDEO, "spatial_pool_stride": 0}, "spatial_pool_stride=0"),
        ({**HF_NEXT_VIDEO, "vision_feature_layer": [-2, -5]}, r"vision_feature_layer=\[-2, -5\]"),
        ({**HF_LLAVA, "projector_hidden_act": "relu"}, "projector_hidden_act='relu'"),
        ({**HF_LLAVA, "multimodal_projector_bias": False}, "multimodal_projector_bias=false"),
        ({**HF_LLAVA, "text_config": {"model_type": "gemma"}}, "text model 'gemma'"),
        ({**HF_LLAVA, "vision_config": {"model_type": "pixtral"}}, "vision model 'pixtral'"),
        (
            {**HF_LLAVA, "vision_config": {"model_type": "siglip_vision_model"}},
            "vision_feature_select_strategy='default'",
        ),
    ],
    ids=["conv-pool", "stride-0", "two-layers", "relu", "no-bias", "gemma", "pixtral", "siglip-default"],
)
def test_refusals_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        orig_config(raw)


def test_llava_aspect_ratio_follows_an_explicit_do_pad():
    assert llava_aspect_ratio(None) == "pad" == llava_aspect_ratio(clip_preprocessor())
    assert llava_aspect_ratio({"do_pad": True}) == "pad"
    assert llava_aspect_ratio({"do_pad": False}) == "square"
    with pytest.raises(ConfigError, match="do_pad='yes'"):
        llava_aspect_ratio({"do_pad": "yes"})
    assert orig_config(HF_NEXT_VIDEO)["image_grid_pinpoints"][0] == [
        672,
        336,
    ]  # transformers' default, as [w, h]


def test_loader_refuses_what_transformers_saved_but_we_cannot_serve(original, tmp_path):
    """A learned pooling conv (spatial_pool_mode conv) and an unreadable preprocessor_config.json."""
    folder = build_next_video(original, tmp_path / "conv", "average", 2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "spatial_pool_mode": "conv"}))
    with pytest.raises(ConfigError, match="spatial_pool_mode='conv'"):
        load_pretrained_model(str(folder), dtype="float32")
    folder = build_llava(original, tmp_path / "bad", "llama-clip-no-file")
    (folder / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="preprocessor_config.json is not valid JSON"):
        load_pretrained_model(str(folder), dtype="float32")


LLAVA_15 = {  # an ORIG LLaVA-1.5-style checkpoint: Llama, CLIP layer -2 without CLS, one crop per image, flat
    "architectures": ["LlavaLlamaForCausalLM"],
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "mm_vision_tower_config": {"kind": "clip", **TINY_TOWER},
    "mm_hidden_size": 32,
    "mm_vision_select_layer": -2,
    "mm_patch_merge_type": "flat",
    "image_grid_pinpoints": None,
    "rope_theta": 10000.0,
}


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_orig_llava_15_exports_to_llava_and_back(tmp_path, aspect):
    """export-hf of an ORIG 1.5-style checkpoint writes transformers' Llava layout (do_pad from
    image_aspect_ratio); it loads back with the original's logits bit for bit, and transformers'
    LlavaForConditionalGeneration gives our logits."""
    from transformers import LlavaForConditionalGeneration

    src = make_demo(
        "tiny", tmp_path / "orig", seed=1, audio=False, overrides={**LLAVA_15, "image_aspect_ratio": aspect}
    )
    report = export_hf(src, tmp_path / "hf")
    assert report["architecture"] == "LlavaForConditionalGeneration" and report["left_out"]["tensors"] == 0
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (exported["model_type"], exported["vision_feature_layer"]) == ("llava", -2)
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_pad"] == (
        aspect == "pad"
    )
    ours = load_pretrained_model(str(src), dtype="float32")
    hf, back = load_both(tmp_path / "hf", LlavaForConditionalGeneration)
    assert back.config.image_aspect_ratio == aspect and back.config.raw["llava_hf_layout"] == "llava"
    for kind, size in (("text", SIZES[0]), ("image", SIZES[0]), ("image", SIZES[1])):
        assert logit_gap(hf, back, kind, size) <= TOLERANCE
        assert logit_gap(hf, ours, kind, size) <= TOLERANCE  # the original, against the same reference
    for with_image in (False, True):
        assert torch.equal(logits_of(ours, with_image), logits_of(back, with_image))


def test_what_llava_cannot_hold_is_not_exported(tmp_path):
    src = make_demo(
        "tiny",
        tmp_path / "orig",
        seed=1,
        audio=False,
        overrides={**LLAVA_15, "image_aspect_ratio": "pad", "mm_patch_merge_type": "spatial_unpad"},
    )
    with pytest.raises(ConfigError, match="cannot export to Llava: mm_patch_merge_type 'spatial_unpad'"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
