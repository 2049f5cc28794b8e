"""Conversation templates of the checkpoints (ORIG llava/conversation.py, spec section 8).

A template turns (role, text) turns, whose text already holds media placeholders, into the prompt
string the checkpoint was trained on, ending with the open assistant turn. Four separator styles
cover the templates LLaVA-NeXT checkpoints use: CHATML (qwen_1_5, qwen_2_5), TWO (llava_v1,
vicuna_v1), LLAMA_2 (mistral_instruct) and MPT (chatml_direct). System turns replace the
template's default system text. Knows nothing of token ids or media.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant turn made."""

    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""


@dataclass(frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant" | "tool" (tool_prompt.py rewrites tool turns)
    text: str  # may contain <image>/<video>/<audio> placeholders (user turns only)
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns: the calls it made
    tool_call_id: str | None = None  # tool turns: the call this answers


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    style: str  # "chatml" | "two" | "llama_2" | "mpt"
    default_system: str
    roles: tuple[str, str]  # how the user and the assistant are named in the prompt
    sep: str
    sep2: str = ""
    stop_strings: tuple[str, ...] = ()

    def render(self, turns: list[ChatTurn]) -> str:
        systems = [t.text for t in turns if t.role == "system"]
        system = "\n".join(systems) if systems else self.default_system
        body = [(t.role, t.text) for t in turns if t.role != "system"]
        return getattr(self, f"_render_{self.style}")(system, body)

    def _role(self, role: str) -> str:
        if role not in ("user", "assistant"):
            raise ValueError(f"role {role!r}: expected system, user or assistant")
        return self.roles[role == "assistant"]

    def _render_chatml(self, system: str, body: list[tuple[str, str]]) -> str:
        # <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n...<|im_start|>assistant\n
        out = [f"<|im_start|>system\n{system}{self.sep}\n"] if system else []
        out += [f"{self._role(role)}\n{text}{self.sep}\n" for role, text in body]
        out.append(f"{self.roles[1]}\n")
        return "".join(out)

    def _render_two(self, system: str, body: list[tuple[str, str]]) -> str:
        # {system} USER: {text} ASSISTANT: {text}</s>USER: {text} ASSISTANT:
        out = [system + self.sep]
        for role, text in body:
            out.append(f"{self._role(role)}: {text}{self.sep2 if role == 'assistant' else self.sep}")
        out.append(f"{self.roles[1]}:")
        return "".join(out)

    def _render_llama_2(self, system: str, body: list[tuple[str, str]]) -> str:
        # [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{text} [/INST] {answer} </s>[INST] {text} [/INST]
        out = []
        for i, (role, text) in enumerate(body):
            self._role(role)
            if role == "user":
                if i == 0 and system:
                    text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
                out.append(f"{self.sep}[INST] {text} [/INST]")
            else:
                out.append(f" {text} {self.sep2}")
        return "".join(out)

    def _render_mpt(self, system: str, body: list[tuple[str, str]]) -> str:
        # <|im_start|>system\n{system}<|im_end|><|im_start|>user\n{text}<|im_end|><|im_start|>assistant\n
        out = [f"<|im_start|>system\n{system}{self.sep}"]
        out += [f"{self._role(role)}{text}{self.sep}" for role, text in body]
        out.append(self.roles[1])
        return "".join(out)


QWEN_1_5 = ConversationTemplate(
    name="qwen_1_5", style="chatml", default_system="You are a helpful assistant.",
    roles=("<|im_start|>user", "<|im_start|>assistant"), sep="<|im_end|>", stop_strings=("<|im_end|>",),
)
QWEN_2_5 = ConversationTemplate(
    name="qwen_2_5", style="chatml",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    roles=QWEN_1_5.roles, sep="<|im_end|>", stop_strings=("<|im_end|>",),
)
LLAVA_V1 = ConversationTemplate(
    name="llava_v1", style="two",
    default_system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop_strings=("</s>",),
)
VICUNA_V1 = ConversationTemplate(
    name="vicuna_v1", style="two",
    default_system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop_strings=("</s>",),
)
MISTRAL_INSTRUCT = ConversationTemplate(
    name="mistral_instruct", style="llama_2", default_system="", roles=("USER", "ASSISTANT"),
    sep="", sep2="</s>", stop_strings=("</s>",),
)
CHATML_DIRECT = ConversationTemplate(
    name="chatml_direct", style="mpt", default_system="Answer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), sep="<|im_end|>", stop_strings=("<|im_end|>",),
)
TEMPLATES = {
    "qwen_1_5": QWEN_1_5,
    "qwen_2": QWEN_1_5,
    "chatml": QWEN_1_5,
    "qwen_2_5": QWEN_2_5,
    "llava_v1": LLAVA_V1,
    "vicuna_v1": VICUNA_V1,
    "v1": VICUNA_V1,
    "mistral_instruct": MISTRAL_INSTRUCT,
    "llava_mistral_instruct": MISTRAL_INSTRUCT,
    "chatml_direct": CHATML_DIRECT,
}
TEMPLATE_BY_LANGUAGE = {"qwen2": QWEN_1_5, "llama": LLAVA_V1, "mistral": MISTRAL_INSTRUCT}


def template_for(language: str, name: str | None = None, tokenizer=None) -> ConversationTemplate:
    """The checkpoint's template: `name` (the `conversation_template` key) if the checkpoint states
    one; else by language model, except that a Llama whose tokenizer speaks ChatML (LLaVA-1.6-34B)
    gets chatml_direct."""
    if name is not None:
        if name not in TEMPLATES:
            raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
        return TEMPLATES[name]
    if language == "llama" and tokenizer is not None and "<|im_start|>" in tokenizer.get_vocab():
        return CHATML_DIRECT
    if language in TEMPLATE_BY_LANGUAGE:
        return TEMPLATE_BY_LANGUAGE[language]
    raise ValueError(f"no conversation template for language model {language!r}")
