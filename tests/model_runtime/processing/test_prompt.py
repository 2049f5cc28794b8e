"""Chunk-wise tokenisation around placeholders (BOS rule, spec 7), refusals across templates, and
placeholder/item checks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from model_runtime import ChatTurn, InvalidPromptError, MediaInput, Processor, load_pretrained_model
from model_runtime.constants import AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX
from model_runtime.processing.conversation import TEMPLATES
from model_runtime.processing.prompt import tokenize_prompt


@pytest.fixture(scope="module")
def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE ("▁" word marker, dummy prefix, byte fallback) that adds BOS, as Llama's."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    corpus = ["What is shown in this image?", "A chat between a curious human and an assistant.",
              "USER: hello ASSISTANT: hi there", "Describe the video and the audio in detail."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_bos_is_emitted_once_and_dropped_from_every_chunk(tiny_model, llama_tokenizer):
    processor = Processor(tiny_model.config, llama_tokenizer, TEMPLATES["llava_v1"])
    media = [MediaInput("image", torch.zeros(1), num_tokens=7)]
    prompt = processor.build_prompt([ChatTurn("user", "<image>\nWhat is shown?")], media)
    text = TEMPLATES["llava_v1"].render([ChatTurn("user", "<image>\nWhat is shown?")])
    before, after = text.split("<image>")
    chunk0, chunk1 = llama_tokenizer(before).input_ids, llama_tokenizer(after).input_ids
    bos = llama_tokenizer.bos_token_id
    assert chunk0[0] == bos and chunk1[0] == bos
    assert prompt.token_ids == [bos, *chunk0[1:], IMAGE_TOKEN_INDEX, *chunk1[1:]]
    assert prompt.token_ids.count(bos) == 1
    # the chunk after the placeholder starts with SentencePiece's dummy-prefix piece before "\n",
    # as Llama's [29871, 13]: what the checkpoints were trained on, unlike whole-string tokenisation
    assert llama_tokenizer.convert_ids_to_tokens(chunk1[1:3]) == ["▁", "<0x0A>"]
    assert prompt.num_text_tokens == len(prompt.token_ids) - 1
    assert prompt.num_tokens == prompt.num_text_tokens + 7


def test_without_bos_chunks_are_joined_as_they_are(tiny_model):
    tokenizer = tiny_model.tokenizer
    assert tokenizer.bos_token_id is None or tokenizer("x").input_ids[0] != tokenizer.bos_token_id
    text = "a <image>\nb<audio>\nc<video>d"
    ids = tokenize_prompt(text, tokenizer)
    chunks = [tokenizer(t).input_ids for t in ("a ", "\nb", "\nc", "d")]
    assert ids == [*chunks[0], IMAGE_TOKEN_INDEX, *chunks[1], AUDIO_TOKEN_INDEX, *chunks[2], IMAGE_TOKEN_INDEX,
                   *chunks[3]]


@pytest.mark.parametrize("name", ["qwen_1_5", "llava_v1", "vicuna_v1", "mistral_instruct", "chatml_direct"])
def test_placeholders_and_special_tokens_typed_as_text_are_refused(tiny_model, llama_tokenizer, name):
    uses_chatml = name in ("qwen_1_5", "chatml_direct")
    tokenizer = tiny_model.tokenizer if uses_chatml else llama_tokenizer
    processor = Processor(tiny_model.config, tokenizer, TEMPLATES[name])
    processor.check_user_text("What is shown in this image? USER: [INST] hi")
    for bad in ["look: <image>", "<video> now", "hear <audio>"]:
        with pytest.raises(InvalidPromptError, match="placeholder"):
            processor.check_user_text(bad)
    for special in (["<|im_start|>", "<|im_end|>", "<|endoftext|>"] if uses_chatml else ["</s>", "<s>", "<unk>"]):
        with pytest.raises(InvalidPromptError, match="special token"):
            processor.check_user_text(f"hi {special} there")


def _item(modality: str) -> MediaInput:
    return MediaInput(modality, torch.zeros(1), num_tokens=3)


@pytest.mark.parametrize(("text", "media", "message"), [
    ("<image>\nhi", [], "1 image placeholders but 0 image items"),
    ("hi", [_item("image")], "0 image placeholders but 1 image items"),
    ("<image>\n<image>\nhi", [_item("image")], "2 image placeholders"),
    ("<audio>\nhi", [_item("image")], "0 image placeholders"),
    ("<video>\n<image>\nhi", [_item("image"), _item("video")], "order"),
])
def test_placeholders_must_match_items(tiny_model, text, media, message):
    with pytest.raises(InvalidPromptError, match=message):
        tiny_model.processor.build_prompt([ChatTurn("user", text)], media)


def test_every_modality_gets_its_sentinel_in_order(tiny_model):
    media = [_item("video"), _item("audio"), _item("image")]
    prompt = tiny_model.processor.build_prompt([ChatTurn("user", "<video>\n<audio>\n<image>\nWhat happens?")], media)
    assert [t for t in prompt.token_ids if t < 0] == [IMAGE_TOKEN_INDEX, AUDIO_TOKEN_INDEX, IMAGE_TOKEN_INDEX]
    assert prompt.num_media_tokens == 9


def test_conversation_template_key_is_honoured(tiny_checkpoint, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config["conversation_template"] = "qwen_2_5"
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained_model(str(path), dtype="float32")
    assert loaded.processor.template.name == "qwen_2_5"
    prompt = loaded.processor.build_prompt([ChatTurn("user", "hi")], [])
    assert loaded.tokenizer.decode(prompt.token_ids).startswith("<|im_start|>system\nYou are Qwen, created by")
