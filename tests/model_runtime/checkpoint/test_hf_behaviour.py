"""`hf_behaviour="transformers"`: a llava-hf checkpoint served as transformers' processor and model
see it. Our prompt ids (each sentinel expanded to its feature rows) equal transformers' processor
output (apply_chat_template + the PIL image processor) for a OneVision export of the tiny demo and a
LLaVA-NeXT (Llama, CLIP) folder saved by transformers, on sizes where ORIG's truncating unpad and
transformers' rounding disagree, and on two images; the default stays ORIG's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model_runtime import ChatTurn, ConfigError, load_pretrained_model
from model_runtime.arch import layout
from model_runtime.checkpoint.hf_layout import orig_config
from model_runtime.checkpoint_tools import make_demo
from model_runtime.checkpoint_tools.hf_export import export_hf
from model_runtime.constants import IMAGE_TOKEN_INDEX
from model_runtime.processing.chat_template import ChatTemplateError, content_parts
from model_runtime.processing.image import CLIP_MEAN, CLIP_STD
from tests.conftest import random_image

# (w, h) where int() and int(round(x, 7)) unpad differently on the tiny demo's 3-patch crops:
# 98 * (9 / 441) = 1.9999999999999998 -> 1 column (ORIG) or 2 (transformers)
OV_ROUNDING = {(98, 441): (27, 19), (441, 98): (19, 15)}  # size -> (ORIG tokens, transformers tokens)
NEXT_PINPOINTS = [[42, 42], [42, 84], [84, 42], [84, 84]]  # [h, w]
# LLaVA-NeXT's 1x2 / 2x1 grids (a 6 x 3 map): 49 * (6 / 147) = 1.9999999999999998 -> 2 or 6 columns kept
NEXT_ROUNDING = {(49, 147): (6, 18), (147, 49): (6, 18)}  # size -> (ORIG unpadded rows*cols, transformers')
# a LLaVA-1.6-vicuna-like template (roles in capitals, images first), written for these tests
NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{% for part in message['content'] %}"
    "{{ part['text'] }}{% endfor %}\n{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return make_demo("tiny", tmp_path_factory.mktemp("orig") / "ckpt", seed=3, audio=False)


@pytest.fixture(scope="module")
def onevision(original, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "onevision"
    export_hf(original, out)
    return out


@pytest.fixture(scope="module")
def llava_next(original, tmp_path_factory) -> Path:
    """LLaVA-1.6's llava-hf shape (Llama LM, CLIP layer -2 without CLS, anyres), saved by transformers,
    with the demo tokenizer, a PIL image processor config and a vicuna-like chat template."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    raw = json.loads((original / "config.json").read_text())
    text = LlamaConfig(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                       intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
                       num_attention_heads=raw["num_attention_heads"], num_key_value_heads=raw["num_key_value_heads"],
                       rms_norm_eps=1e-5, max_position_embeddings=4096)
    config = LlavaNextConfig(
        text_config=text,
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                       image_size=42, patch_size=14),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS,
        image_token_index=raw["image_token_index"], projector_hidden_act="gelu", multimodal_projector_bias=True,
    )
    torch.manual_seed(4)
    folder = tmp_path_factory.mktemp("hf") / "llava-next"
    LlavaNextForConditionalGeneration(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(original / name, folder / name)
    (folder / "chat_template.jinja").write_text(NEXT_TEMPLATE)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
        "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": 42}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": 42, "width": 42}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_pad": True, "image_grid_pinpoints": NEXT_PINPOINTS,
    }))
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaNextProcessor", "image_token": "<image>", "patch_size": 14,
        "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
    }))
    return folder


def hf_processor(folder: Path):
    """transformers' processor of the folder with its PIL image processor (no torchvision here; no video
    processor, which needs it)."""
    from transformers import (
        AutoTokenizer,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    config = json.loads((folder / "config.json").read_text())
    settings = json.loads((folder / "processor_config.json").read_text())
    settings.pop("processor_class", None)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template = (folder / "chat_template.jinja").read_text()
    if config["model_type"] == "llava_onevision":
        images = LlavaOnevisionImageProcessorPil.from_pretrained(str(folder))

        class ImagesOnly(LlavaOnevisionProcessor):  # its video processor needs torchvision: left out, unchecked
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor" and argument is None:
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        return ImagesOnly(image_processor=images, tokenizer=tokenizer, video_processor=None, chat_template=template,
                          **settings)
    images = LlavaNextImageProcessorPil.from_pretrained(str(folder))
    return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, chat_template=template, **settings)


def hf_inputs(processor, images, text: str):
    """transformers' input ids and pixels for one user turn: the images, then the text."""
    messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    from transformers import LlavaOnevisionProcessor

    nested = isinstance(processor, LlavaOnevisionProcessor) and len(images) > 1  # one sample with n images
    return processor(text=prompt, images=[images] if nested else images or None, return_tensors="pt")


def our_ids(loaded, images, text: str, image_token_id: int) -> list[int]:
    """Our prompt ids with each image's sentinel expanded to its feature rows."""
    p = loaded.processor
    media = [p.process_image(image, single_crop=p.is_single_crop(len(images))) for image in images]
    prompt = p.build_prompt([ChatTurn("user", "<image>\n" * len(images) + text)], media)
    rows = iter(m.num_tokens for m in media)
    ids: list[int] = []
    for t in prompt.token_ids:
        ids.extend([image_token_id] * next(rows) if t == IMAGE_TOKEN_INDEX else [t])
    assert len(ids) == prompt.num_tokens
    return ids


def image_rows(ids: list[int], image_token_id: int) -> int:
    return sum(1 for t in ids if t == image_token_id)


@pytest.mark.parametrize("family", ["onevision", "llava_next"])
def test_prompt_ids_equal_the_transformers_processor(family, request):
    folder = request.getfixturevalue(family)
    processor = hf_processor(folder)
    loaded = load_pretrained_model(str(folder), dtype="float32", hf_behaviour="transformers")
    token = processor.image_token_id
    rounding = OV_ROUNDING if family == "onevision" else NEXT_ROUNDING
    cases = [[(160, 90)], *([size] for size in rounding), [(160, 90), (90, 90)], [next(iter(rounding)), (30, 200)]]
    for sizes in cases:
        images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
        theirs = hf_inputs(processor, images, "What is shown?")["input_ids"][0].tolist()
        assert our_ids(loaded, images, "What is shown?", token) == theirs, sizes


def test_onevision_extreme_aspect_ratios_round_as_transformers(onevision):
    processor = hf_processor(onevision)
    token = processor.image_token_id
    ours = load_pretrained_model(str(onevision), dtype="float32", hf_behaviour="transformers")
    orig = load_pretrained_model(str(onevision), dtype="float32")
    assert orig.config.unpad_rounding == "truncate" and ours.config.unpad_rounding == "round"
    for (w, h), (orig_rows, hf_rows) in OV_ROUNDING.items():
        image = random_image(w, h, seed=1)
        theirs = hf_inputs(processor, [image], "Hi")["input_ids"][0].tolist()
        assert image_rows(theirs, token) == hf_rows
        assert image_rows(our_ids(ours, [image], "Hi", token), token) == hf_rows
        assert image_rows(our_ids(orig, [image], "Hi", token), token) == orig_rows  # the default: ORIG's


def test_llava_next_template_and_rounding_switch_together(llava_next):
    processor = hf_processor(llava_next)
    token = processor.image_token_id
    ours = load_pretrained_model(str(llava_next), dtype="float32", hf_behaviour="transformers")
    orig = load_pretrained_model(str(llava_next), dtype="float32")
    p = orig.config.vision.num_patches_per_side
    for (w, h), (orig_area, hf_area) in NEXT_ROUNDING.items():
        nw, nh = layout.anyres_grid(orig.config, (w, h))
        for cfg, area in ((orig.config, orig_area), (ours.config, hf_area)):
            top, bottom, left, right = layout.unpad_bounds((w, h), nh * p, nw * p, cfg.unpad_rounding)
            assert (bottom - top) * (right - left) == area
        image = random_image(w, h, seed=2)
        theirs = hf_inputs(processor, [image], "Hi")["input_ids"][0].tolist()
        assert image_rows(our_ids(ours, [image], "Hi", token), token) == image_rows(theirs, token)
        assert image_rows(our_ids(orig, [image], "Hi", token), token) != image_rows(theirs, token)
    # the default renders ORIG's template (chatml_direct: a Llama whose tokenizer speaks ChatML), the option
    # the checkpoint's
    orig_text = orig.processor.template.render([ChatTurn("user", "<image>\nHi")])
    assert orig_text.startswith("<|im_start|>system\nAnswer the questions.<|im_end|>")
    assert ours.processor.template.name == "chat_template.jinja"
    assert ours.processor.template.render([ChatTurn("user", "<image>\nHi")]) == "USER: <image>\nHi ASSISTANT:"
    # several images: each laid out in full anyres as transformers' LlavaNextImageProcessor does
    assert orig.processor.is_single_crop(2) and not ours.processor.is_single_crop(2)


def test_the_option_is_refused_where_it_does_not_apply(original, onevision):
    with pytest.raises(ConfigError, match="llava-hf checkpoints only"):
        load_pretrained_model(str(original), dtype="float32", hf_behaviour="transformers")
    with pytest.raises(ConfigError, match="hf_behaviour='hf'"):
        load_pretrained_model(str(onevision), dtype="float32", hf_behaviour="hf")


def test_llava_without_do_pad_crops_as_transformers():
    raw = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "text_config": {}}
    assert orig_config(raw)["image_aspect_ratio"] == "pad"
    assert orig_config(raw, behaviour="transformers")["image_aspect_ratio"] == "square"
    assert orig_config(raw, {"do_pad": True}, behaviour="transformers")["image_aspect_ratio"] == "pad"
    assert orig_config(raw, behaviour="transformers")["multi_image_layout"] == "as_single"
    assert "multi_image_layout" not in orig_config(raw)


def test_content_parts_and_a_template_that_drops_media(onevision, tmp_path):
    assert content_parts("<image>\n<image>\nCompare.") == [{"type": "image"}, {"type": "image"},
                                                            {"type": "text", "text": "Compare."}]
    folder = tmp_path / "text-only-template"
    shutil.copytree(onevision, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endfor %}")
    loaded = load_pretrained_model(str(folder), dtype="float32", hf_behaviour="transformers")
    with pytest.raises(ChatTemplateError, match="rendered the media parts"):
        loaded.processor.template.render([ChatTurn("user", "<image>\nHi")])
