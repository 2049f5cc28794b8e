"""End to end: /v1/completions with the official openai client, and /tokenize and /detokenize
(vLLM's shapes), against a real server; the counts agree with what chat charges."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import png_data_url, random_image

pytestmark = pytest.mark.xdist_group("api")


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    return api_server.client()


def test_a_text_prompt_and_its_token_ids_give_the_same_greedy_completion(client, api_server):
    text = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert text.object == "text_completion" and text.id.startswith("cmpl-")
    assert text.usage.completion_tokens == 6 and text.choices[0].finish_reason == "length"
    ids = httpx.post(api_server.base_url + "/tokenize", json={"prompt": "Once upon a time"}).json()
    assert ids["count"] == len(ids["tokens"]) == text.usage.prompt_tokens
    by_ids = client.completions.create(model="tiny", prompt=ids["tokens"], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text
    back = httpx.post(api_server.base_url + "/detokenize", json={"tokens": ids["tokens"]}).json()
    assert back["prompt"].endswith("Once upon a time")


def test_several_prompts_n_echo_and_logprobs(client):
    many = client.completions.create(model="tiny", prompt=["a b c", "d e"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text and many.usage.completion_tokens == 12
    alone = client.completions.create(model="tiny", prompt="d e", max_tokens=3, temperature=0)
    assert many.choices[2].text == alone.choices[0].text
    echoed = client.completions.create(model="tiny", prompt="d e", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == "d e" + alone.choices[0].text
    lp = client.completions.create(model="tiny", prompt="d e", max_tokens=3, temperature=0, logprobs=2)
    logprobs = lp.choices[0].logprobs
    assert "".join(logprobs.tokens) == lp.choices[0].text and len(logprobs.token_logprobs) == 3
    assert all(len(top) <= 2 for top in logprobs.top_logprobs) and logprobs.text_offset[0] == 0


def test_a_streamed_completion_reassembles_to_the_whole_one(client):
    whole = client.completions.create(model="tiny", prompt="x y z", max_tokens=8, temperature=0)
    pieces, reason, usage = [], None, None
    for chunk in client.completions.create(model="tiny", prompt="x y z", max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        for c in chunk.choices:
            pieces.append(c.text)
            reason = c.finish_reason or reason
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].text and reason == "length"
    assert usage.prompt_tokens == whole.usage.prompt_tokens and usage.completion_tokens == 8


def test_bad_completions_are_400s_naming_the_field(client):
    cases = [({"suffix": "end"}, "suffix"), ({"prompt": [10**9]}, "prompt"), ({"echo": True, "logprobs": 1}, "echo"),
             ({"prompt": []}, "prompt"), ({"temperature": 9}, "temperature"), ({"best_of": 3}, "best_of")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**{"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra})
        assert e.value.body["param"] == param, (extra, e.value.body)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="hi")


def test_tokenize_messages_counts_what_chat_charges_media_included(client, api_server):
    image = {"type": "image_url", "image_url": {"url": png_data_url(random_image(70, 40, seed=2))}}
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    counted = httpx.post(api_server.base_url + "/tokenize", json={"model": "tiny", "messages": messages}).json()
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    assert counted["count"] == chat.usage.prompt_tokens and counted["max_model_len"] > counted["count"]
    assert counted["tokens"].count(-200) == 1 and len(counted["media"]) == 1
    assert counted["count"] == len(counted["tokens"]) - 1 + counted["media"][0]["tokens"]
    assert counted["media"][0]["tokens"] == chat.usage.prompt_tokens_details.image_tokens
    bad = httpx.post(api_server.base_url + "/tokenize", json={"prompt": "x", "messages": messages})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    bad = httpx.post(api_server.base_url + "/detokenize", json={"tokens": [-5]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
