"""The LLaVA model on tiny random weights: feature rows == layout counts, splicing, batching."""

from __future__ import annotations

import random

import pytest
import torch

from model_runtime import ChatTurn, MediaMismatchError, image_token_count
from model_runtime.arch import layout
from model_runtime.arch.layout import LayoutError
from model_runtime.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from model_runtime.inputs import EncodedItem, MediaInput
from tests.conftest import random_image

SIZES = [(42, 42), (100, 60), (60, 100), (84, 84), (7, 300), (300, 7), (1, 1), (126, 42), (500, 333)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("single_crop", [False, True])
def test_feature_rows_equal_layout_count(tiny_model, size, single_crop):
    image = random_image(*size)
    item = tiny_model.processor.process_image(image, single_crop=single_crop)
    with torch.inference_mode():
        rows = tiny_model.model.encode_media([item])[0].features
    assert rows.shape == (item.num_tokens, tiny_model.model.config.hidden_size)
    assert item.num_tokens == image_token_count(tiny_model.config, size, single_crop=single_crop)


def test_anyres_max_cap_shrinks_the_map(tiny_model):
    # tiny is anyres_max_1 with P = 3: a 2x2 grid (6x6 map) is capped to 3x3 -> 9 + 3*4
    item = tiny_model.processor.process_image(random_image(84, 84), single_crop=False)
    assert item.data.shape[0] == 5
    assert item.num_tokens == 9 + 3 * 4


def test_prompt_has_one_sentinel_per_image_and_counts_text(tiny_model):
    p = tiny_model.processor
    media = [p.process_image(random_image(50, 50), single_crop=False)]
    prompt = p.build_prompt([ChatTurn("user", "<image>\nWhat is this?")], media)
    assert prompt.token_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert prompt.num_text_tokens == len(prompt.token_ids) - 1
    assert prompt.num_tokens == prompt.num_text_tokens + media[0].num_tokens
    text = p.tokenizer.decode([t for t in prompt.token_ids if t >= 0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("What is this?<|im_end|>\n<|im_start|>assistant\n")


def test_spliced_sequence_length_is_the_charged_prompt_length(tiny_model):
    p, model = tiny_model.processor, tiny_model.model
    media = [p.process_image(random_image(90, 40), single_crop=False)]
    prompt = p.build_prompt([ChatTurn("user", "<image>\nDescribe.")], media)
    with torch.inference_mode():
        feats = [encoded.features for encoded in model.encode_media(media)]
        embeds, mask, _ = model.prepare_inputs_for_multimodal([prompt.token_ids], [[EncodedItem("image", feats[0])]])
    assert embeds.shape[1] == prompt.num_tokens == int(mask.sum())


def test_placeholder_item_mismatch_is_refused(tiny_model):
    model = tiny_model.model
    d = model.config.hidden_size
    ids = [1, IMAGE_TOKEN_INDEX, 2, IMAGE_TOKEN_INDEX, 3]
    one = [EncodedItem("image", torch.zeros(4, d))]
    with pytest.raises(MediaMismatchError):
        model.prepare_inputs_for_multimodal([ids], [one])
    with pytest.raises(MediaMismatchError):
        model.prepare_inputs_for_multimodal([[1, 2, 3]], [one])


def test_left_padded_batch_logits_equal_solo(tiny_model):
    p, model = tiny_model.processor, tiny_model.model
    media = [p.process_image(random_image(70, 30), single_crop=False)]
    with_image = p.build_prompt([ChatTurn("user", "<image>\nWhat is shown here?")], media)
    text_only = p.build_prompt([ChatTurn("user", "hi")], [])
    with torch.inference_mode():
        feats = [encoded.features for encoded in model.encode_media(media)]
        items = [[EncodedItem("image", feats[0])], []]
        rows = [with_image.token_ids, text_only.token_ids]

        def last_logits(rows, items):
            embeds, mask, pos = model.prepare_inputs_for_multimodal(rows, items, padding_side="left")
            return model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[:, -1]

        batched = last_logits(rows, items)
        solo = torch.cat([last_logits([r], [i]) for r, i in zip(rows, items, strict=True)])
    torch.testing.assert_close(batched, solo, atol=1e-5, rtol=1e-5)


# -- videos through encode_media ------------------------------------------------------------------
def video_item(model_cfg, num_frames: int, seed: int = 0) -> MediaInput:
    frames = torch.randn(num_frames, 3, 42, 42, generator=torch.Generator().manual_seed(seed))
    return MediaInput("video", frames, layout.video_token_count(model_cfg, num_frames))


def test_video_item_rows_and_charged_count_must_agree(tiny_model):
    model = tiny_model.model
    good = video_item(tiny_model.config, 4)
    assert good.num_tokens == 4 * 2 * 2 + 1  # bilinear ceil(3/2) = 2 per side, one_token newline
    with torch.inference_mode():
        (item,) = model.encode_media([good])
        assert item.features.shape == (good.num_tokens, model.config.hidden_size)
        bad = MediaInput("video", good.data, good.num_tokens + 1)
        with pytest.raises(LayoutError, match="charged"):
            model.encode_media([bad])


# -- training-mode splice ---------------------------------------------------------------------------
def test_training_splice_ignores_media_rows_and_padding(tiny_model):
    model = tiny_model.model
    d = model.config.hidden_size
    image = EncodedItem("image", torch.randn(4, d))
    rows = [[5, 6, IMAGE_TOKEN_INDEX, 7], [8, 9]]
    labels = [[-100, 6, -100, 7], [8, 9]]
    embeds, mask, positions, out = model.prepare_inputs_for_training(rows, [[image], []], labels)
    # right padding: the checkpoint's tokenizer_padding_side
    assert out.tolist() == [[-100, 6, -100, -100, -100, -100, 7], [8, 9] + [IGNORE_INDEX] * 5]
    assert mask.tolist() == [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]
    assert positions.tolist() == [list(range(7)), [0, 1, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(embeds[0, 2:6], image.features)
    inference, _, _ = model.prepare_inputs_for_multimodal(rows, [[image], []], padding_side="right")
    torch.testing.assert_close(embeds, inference)
    with pytest.raises(ValueError, match="labels"):
        model.prepare_inputs_for_training([[1, 2]], [[]], [[1]])


def test_position_skipping_only_in_training_mode(build_model):
    model = build_model(use_pos_skipping=True, pos_skipping_range=50)
    rows, items, labels = [[1, 2, 3, 4, 5, 6], [7, 8]], [[], []], [[1, 2, 3, 4, 5, 6], [7, 8]]
    _, _, positions, _ = model.prepare_inputs_for_training(rows, items, labels)
    assert positions.tolist() == [list(range(6)), [0, 1, 0, 0, 0, 0]]  # eval mode: plain positions
    model.train()
    try:
        seen = set()
        for seed in range(20):
            random.seed(seed)
            _, _, positions, _ = model.prepare_inputs_for_training(rows, items, labels)
            assert torch.equal(positions[0], positions[1])  # one arange shared by all rows (ORIG)
            shifts = (positions[0] - torch.arange(6)).tolist()
            assert shifts == sorted(shifts) and shifts[0] >= 0 and shifts[-1] <= 50 and len(set(shifts)) <= 2
            seen.add(tuple(shifts))
        assert len(seen) > 1
        _, _, positions = model.prepare_inputs_for_multimodal(rows, items)
        assert positions.tolist() == [list(range(6)), [0, 0, 0, 0, 0, 1]]  # the engine's call never skips
    finally:
        model.eval()
