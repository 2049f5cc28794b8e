"""Conversation templates of the checkpoints (ORIG llava/conversation.py, spec section 8).

A template turns (role, text) turns, whose text already holds media placeholders, into the prompt
string the checkpoint was trained on, ending with the open assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant"
    text: str  # may contain <image>/<video>/<audio> placeholders (user turns only)


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    default_system: str
    stop_strings: tuple[str, ...]

    def render(self, turns: list[ChatTurn]) -> str:
        system = self.default_system
        body = [t for t in turns if t.role != "system"]
        systems = [t.text for t in turns if t.role == "system"]
        if systems:
            system = "\n".join(systems)
        if self.name == "qwen_1_5":
            out = [f"<|im_start|>system\n{system}<|im_end|>\n"]
            for turn in body:
                out.append(f"<|im_start|>{turn.role}\n{turn.text}<|im_end|>\n")
            out.append("<|im_start|>assistant\n")
            return "".join(out)
        raise NotImplementedError(f"conversation template {self.name!r}")


QWEN_1_5 = ConversationTemplate(
    name="qwen_1_5", default_system="You are a helpful assistant.", stop_strings=("<|im_end|>",)
)
TEMPLATES = {"qwen_1_5": QWEN_1_5, "chatml": QWEN_1_5}


def template_for(language: str, name: str | None = None) -> ConversationTemplate:
    """The checkpoint's template: `name` if the checkpoint states one, else by language model."""
    if name is not None:
        if name not in TEMPLATES:
            raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
        return TEMPLATES[name]
    if language == "qwen2":
        return QWEN_1_5
    raise ValueError(f"no conversation template for language model {language!r} yet")
