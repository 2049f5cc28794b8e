"""A llava-hf export served over HTTP answers like the original checkpoint: `llava-serve export-hf`,
then two real server processes (the original and its export) asked the same chats through the
official openai client: same prompt token counts, same greedy tokens, logprobs and text."""

from __future__ import annotations

import pytest

from model_runtime.checkpoint_tools.hf_export import export_hf
from tests.conftest import png_data_url, random_image
from tests.e2e.conftest import start_server, stop_server

pytestmark = pytest.mark.xdist_group("skeleton")  # beside the module server of the tiny model


@pytest.fixture(scope="module")
def exported_server(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-hf"
    export_hf(tiny_checkpoint, folder)
    s = start_server(str(folder), tmp_path_factory.mktemp("hf-server"))
    yield s
    stop_server(s)


def chat(client, content) -> dict:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=8,
                                       temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    entries = r.choices[0].logprobs.content
    return {
        "text": r.choices[0].message.content,
        "prompt_tokens": r.usage.prompt_tokens,
        "image_tokens": r.usage.prompt_tokens_details.image_tokens,
        "tokens": [(e.token, tuple(e.bytes)) for e in entries],
        "logprobs": [e.logprob for e in entries],
        "top": [[(t.token, t.logprob) for t in e.top_logprobs] for e in entries],
    }


@pytest.mark.parametrize("content", [
    "Hello there",
    [{"type": "image_url", "image_url": {"url": png_data_url(random_image(160, 90, seed=1))}},
     {"type": "text", "text": "What is in this image?"}],
    [{"type": "image_url", "image_url": {"url": png_data_url(random_image(30, 200, seed=2))}},
     {"type": "image_url", "image_url": {"url": png_data_url(random_image(90, 90, seed=3))}},
     {"type": "text", "text": "Compare them."}],
], ids=["text", "one image", "two images, one extreme"])
def test_the_export_answers_like_the_original(server, exported_server, content):
    original = chat(server.client(), content)
    export = chat(exported_server.client(), content)
    assert export["prompt_tokens"] == original["prompt_tokens"]
    assert export["image_tokens"] == original["image_tokens"]
    assert export["tokens"] == original["tokens"] and export["text"] == original["text"]
    assert max(abs(a - b) for a, b in zip(export["logprobs"], original["logprobs"], strict=True)) <= 1e-5
    for mine, theirs in zip(export["top"], original["top"], strict=True):
        assert [t for t, _ in mine] == [t for t, _ in theirs]
