"""Conversation templates against the spec's examples (spec section 8) and the checkpoint's choice."""

from __future__ import annotations

import pytest

from model_runtime import ChatTurn
from model_runtime.processing.conversation import TEMPLATES, template_for

Q = "<image>\nWhat is shown in this image?"
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")

SINGLE_TURN = {
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"{Q}<|im_end|>\n<|im_start|>assistant\n",
    "qwen_2_5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n",
    "llava_v1": f"{LLAVA_SYSTEM} USER: {Q} ASSISTANT:",
    "vicuna_v1": f"{VICUNA_SYSTEM} USER: {Q} ASSISTANT:",
    "mistral_instruct": f"[INST] {Q} [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
                     f"{Q}<|im_end|><|im_start|>assistant\n",
}

MULTI_TURN = [ChatTurn("user", Q), ChatTurn("assistant", "A cat."), ChatTurn("user", "And its colour?")]
MULTI_TURN_EXPECTED = {
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"{Q}<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nAnd its colour?"
                "<|im_end|>\n<|im_start|>assistant\n",
    "llava_v1": f"{LLAVA_SYSTEM} USER: {Q} ASSISTANT: A cat.</s>USER: And its colour? ASSISTANT:",
    "mistral_instruct": f"[INST] {Q} [/INST] A cat. </s>[INST] And its colour? [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
                     f"{Q}<|im_end|><|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nAnd its colour?"
                     "<|im_end|><|im_start|>assistant\n",
}

WITH_SYSTEM = {
    "qwen_1_5": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "llava_v1": "Be brief. USER: Hi ASSISTANT:",
    "mistral_instruct": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    "chatml_direct": "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n",
}


@pytest.mark.parametrize("name", sorted(SINGLE_TURN))
def test_single_turn_matches_the_spec_example(name):
    assert TEMPLATES[name].render([ChatTurn("user", Q)]) == SINGLE_TURN[name]


@pytest.mark.parametrize("name", sorted(MULTI_TURN_EXPECTED))
def test_multi_turn_rendering(name):
    assert TEMPLATES[name].render(MULTI_TURN) == MULTI_TURN_EXPECTED[name]


@pytest.mark.parametrize("name", sorted(WITH_SYSTEM))
def test_system_turn_replaces_the_default_system(name):
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")]
    assert TEMPLATES[name].render(turns) == WITH_SYSTEM[name]


def test_empty_system_turn_drops_the_chatml_system_block():
    rendered = TEMPLATES["qwen_1_5"].render([ChatTurn("system", ""), ChatTurn("user", "Hi")])
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        TEMPLATES["llava_v1"].render([ChatTurn("tool", "x")])


class _Vocab:
    def __init__(self, *tokens: str) -> None:
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


def test_template_chosen_from_the_checkpoint():
    assert template_for("qwen2").name == "qwen_1_5"
    assert template_for("llama").name == "llava_v1"
    assert template_for("mistral").name == "mistral_instruct"
    # LLaVA-1.6-34B: a Llama LM whose tokenizer speaks ChatML
    assert template_for("llama", tokenizer=_Vocab("<s>", "<|im_start|>", "<|im_end|>")).name == "chatml_direct"
    assert template_for("llama", tokenizer=_Vocab("<s>", "</s>")).name == "llava_v1"
    # an explicit `conversation_template` key wins
    assert template_for("qwen2", "qwen_2_5").name == "qwen_2_5"
    assert template_for("llama", "vicuna_v1").name == "vicuna_v1"
    with pytest.raises(ValueError, match="unknown conversation template"):
        template_for("qwen2", "llama_3")
