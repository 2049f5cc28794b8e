"""`serve --hf-behaviour transformers` answers as transformers does, for both llava-hf families that
have anyres images: a OneVision export of the tiny demo (SigLIP, Qwen2-shaped LM) and a LLaVA-NeXT
folder saved by transformers (CLIP layer -2 without CLS, Llama LM, a vicuna-like template), each served
by a real server process and asked through the official openai client, against transformers'
LlavaOnevisionForConditionalGeneration / LlavaNextForConditionalGeneration and their processors (PIL
image processors) run here on the same folder: prompt token counts, the first token's top logprobs
(<= 1e-4, float32) and 8 greedy tokens as ids and as text. One image whose unpadding ORIG rounds
differently, a wide one, and two images."""

from __future__ import annotations

import pytest
import torch

from model_runtime.checkpoint_tools.hf_export import export_hf
from model_runtime.engine.detokenizer import TokenTexts
from tests.conftest import png_data_url, random_image
from tests.e2e.conftest import start_server, stop_server
from tests.model_runtime.checkpoint.test_hf_behaviour import (
    NEXT_ROUNDING,
    OV_ROUNDING,
    hf_inputs,
    hf_processor,
    llava_next,  # noqa: F401 (fixture)
    original,  # noqa: F401 (fixture)
)

NUM_TOKENS = 8
TOP = 5


FAMILIES = ("onevision", "llava_next")  # the llava-hf families with anyres images


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request, tiny_checkpoint, tmp_path_factory):
    if request.param == "llava_next":
        return request.getfixturevalue("llava_next")
    out = tmp_path_factory.mktemp("hf-transformers") / "tiny-hf"
    export_hf(tiny_checkpoint, out)
    return out


@pytest.fixture(scope="module")
def served(folder, tmp_path_factory):
    s = start_server(str(folder), tmp_path_factory.mktemp("hf-transformers-server"), "--hf-behaviour", "transformers")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    onevision = folder.name == "tiny-hf"
    cls = LlavaOnevisionForConditionalGeneration if onevision else LlavaNextForConditionalGeneration
    model = cls.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, hf_processor(folder)


def transformers_answer(reference, images, text: str) -> dict:
    """transformers' prompt length, first-token top logprobs and greedy ids (EOS not stopping)."""
    model, processor = reference
    inputs = hf_inputs(processor, images, text)
    ids = inputs.pop("input_ids")
    inputs.pop("attention_mask", None)
    first, greedy = None, []
    with torch.inference_mode():
        for _ in range(NUM_TOKENS):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs).logits[0, -1].float()
            if first is None:
                first = torch.log_softmax(logits, dim=-1)
            greedy.append(int(logits.argmax()))
            ids = torch.cat([ids, torch.tensor([[greedy[-1]]])], dim=1)
    top = torch.topk(first, TOP)
    return {"prompt_tokens": ids.shape[1] - NUM_TOKENS, "greedy": greedy,
            "top": list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
            "text": processor.tokenizer.decode(greedy, skip_special_tokens=True)}


def served_answer(server, images, text: str, token_id) -> dict:
    content = [*({"type": "image_url", "image_url": {"url": png_data_url(i)}} for i in images),
               {"type": "text", "text": text}]
    r = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=NUM_TOKENS, temperature=0,
        logprobs=True, top_logprobs=TOP, extra_body={"ignore_eos": True})
    entries = r.choices[0].logprobs.content
    return {"prompt_tokens": r.usage.prompt_tokens, "greedy": [token_id[bytes(e.bytes)] for e in entries],
            "top": [(token_id[bytes(t.bytes)], t.logprob) for t in entries[0].top_logprobs],
            "text": r.choices[0].message.content}


@pytest.mark.parametrize("case", ["rounding differs", "wide", "two images"])
def test_served_with_transformers_behaviour_answers_as_transformers(served, reference, case):
    rounding = next(iter(OV_ROUNDING if served_family(reference) == "onevision" else NEXT_ROUNDING))
    sizes = {"rounding differs": [rounding], "wide": [(160, 90)], "two images": [rounding[::-1], (90, 90)]}[case]
    tokenizer = reference[1].tokenizer
    texts = TokenTexts(tokenizer)
    token_id = {}
    for i in range(len(tokenizer)):
        token_id.setdefault(texts.bytes(i), i)  # the server's logprobs name tokens by their bytes
    images = [random_image(w, h, seed=i + 1) for i, (w, h) in enumerate(sizes)]
    theirs = transformers_answer(reference, images, "What is in the picture?")
    mine = served_answer(served, images, "What is in the picture?", token_id)
    assert mine["prompt_tokens"] == theirs["prompt_tokens"]
    assert [t for t, _ in mine["top"]] == [t for t, _ in theirs["top"]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(mine["top"], theirs["top"], strict=True)) <= 1e-4
    assert mine["greedy"] == theirs["greedy"]
    assert mine["text"] == theirs["text"]


def served_family(reference) -> str:
    return "onevision" if reference[0].config.model_type == "llava_onevision" else "llava_next"
