"""End to end: the real server process, the official openai client, the tiny model."""

from __future__ import annotations

import openai
import pytest
import torch

from model_runtime import ChatTurn
from model_runtime.inputs import EncodedItem
from tests.conftest import png_data_url, random_image

pytestmark = pytest.mark.xdist_group("skeleton")  # one server process for the module


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def consumed_sequence_length(tiny_model, text: str, images) -> int:
    """Length of the LM input sequence the model builds for this prompt, computed here independently."""
    p, model = tiny_model.processor, tiny_model.model
    media = [p.process_image(im, single_crop=len(images) > 1) for im in images]
    prompt = p.build_prompt([ChatTurn("user", text)], media)
    with torch.inference_mode():
        feats = [encoded.features for encoded in model.encode_media(media)]
        embeds, _, _ = model.prepare_inputs_for_multimodal(
            [prompt.token_ids], [[EncodedItem("image", f) for f in feats]]
        )
    return embeds.shape[1]


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_text_chat(client, tiny_model):
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=6, temperature=0
    )
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens == consumed_sequence_length(tiny_model, "Hello there", [])


def test_image_chat_usage_equals_consumed_sequence(client, tiny_model):
    image = random_image(160, 90, seed=3)
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(image)}},
            {"type": "text", "text": "What is in this image?"},
        ]}],
        max_tokens=5,
        temperature=0,
    )
    expected = consumed_sequence_length(tiny_model, "<image>\nWhat is in this image?", [image])
    assert r.usage.prompt_tokens == expected
    assert r.usage.prompt_tokens_details.image_tokens == tiny_model.processor.process_image(image, False).num_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_equals_non_streamed(client):
    messages = [{"role": "user", "content": "Stream this please"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        )
    assert e.value.code == "invalid_image"
    # the server keeps serving
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still there?"}], max_tokens=1)
    assert ok.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("seed", range(6))
def test_text_is_the_decode_of_the_tokens_streamed_or_not(client, tiny_model, seed):
    """A third of the tiny vocabulary is partial UTF-8: sampled answers end inside characters and
    hold runs of stray bytes. The streamed deltas joined, the non-streamed text and the chosen
    tokens' bytes all say the same thing (U+FFFD where bytes are invalid or cut)."""
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Tell me something"}], max_tokens=9,
                  temperature=1.0, seed=seed, logprobs=True, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    special = set(tiny_model.tokenizer.all_special_tokens)  # an EOS sampled under ignore_eos has no text
    raw = b"".join(bytes(t.bytes) for t in whole.choices[0].logprobs.content if t.token not in special)
    assert whole.choices[0].message.content == raw.decode("utf-8", errors="replace")
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length"
    # a stop string taken from the middle of that text cuts both the same way
    text = whole.choices[0].message.content
    if len(text) > 4 and "\ufffd" not in text[2:4]:
        stop = text[2:4]
        cut = client.chat.completions.create(**{**kwargs, "stop": [stop]})
        chunks = list(client.chat.completions.create(stream=True, **{**kwargs, "stop": [stop]}))
        assert cut.choices[0].message.content == text[: text.find(stop)] == "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert cut.choices[0].finish_reason == "stop"
