"""A checkpoint's own Jinja chat template as a conversation template (`hf_behaviour="transformers"`).

llava-hf folders ship the template transformers' processor renders (chat_template.jinja,
chat_template.json, or the tokenizer's `chat_template`). `CheckpointChatTemplate.render` turns our
turns back into transformers' message shape (content parts: text, image, video, audio), renders
them with the tokenizer's `apply_chat_template` and maps the checkpoint's media tokens to our
placeholders, so the sentinels, token counts and splicing stay ours. Knows nothing of token ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from model_runtime.config import ConfigError
from model_runtime.config.llava import read_json_object
from model_runtime.constants import MODALITY_BY_PLACEHOLDER, PLACEHOLDER_BY_MODALITY
from model_runtime.processing.conversation import ChatTurn
from model_runtime.processing.processor import InvalidPromptError
from model_runtime.processing.prompt import PLACEHOLDERS

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PROCESSOR_CONFIG = "processor_config.json"
# chat.py writes each media part as its placeholder and a newline; the newline is ours, not the template's
_PART = re.compile("(" + PLACEHOLDERS.pattern + ")\n?")


class ChatTemplateError(InvalidPromptError):
    """The rendered prompt does not hold the turns' media placeholders, in order (the template
    dropped, repeated or reordered a media part)."""


@dataclass(frozen=True)
class CheckpointChatTemplate:
    name: str  # where the template came from, e.g. "chat_template.jinja"
    source: str  # the Jinja text
    media_tokens: tuple[tuple[str, str], ...]  # (checkpoint's token, our placeholder) where they differ
    tokenizer: PreTrainedTokenizerBase  # renders with transformers' sandboxed Jinja environment

    def render(self, turns: list[ChatTurn], tools: list[dict] | None = None) -> str:
        messages = [_message(t) for t in turns]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.source, tools=list(tools) if tools else None, tokenize=False,
                add_generation_prompt=True,
            )
        except TemplateError as e:  # the template's own refusals (raise_exception), e.g. roles out of turn
            raise ChatTemplateError(f"the checkpoint's chat template ({self.name}) refused the messages: {e}") from e
        assert isinstance(text, str)  # tokenize=False: the rendered text
        for token, placeholder in self.media_tokens:
            text = text.replace(token, placeholder)
        wanted = [m for t in turns for m in _PART.findall(t.text)]
        rendered = PLACEHOLDERS.findall(text)
        if rendered != wanted:
            raise ChatTemplateError(f"the checkpoint's chat template ({self.name}) rendered the media parts "
                                    f"{rendered} for {wanted}")
        return text


def _message(turn: ChatTurn) -> dict:
    """A turn in transformers' message shape (tool calls and results as OpenAI's, arguments decoded)."""
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.text}
    message: dict = {"role": turn.role, "content": content_parts(turn.text)}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _decoded(c.arguments)}}
            for c in turn.tool_calls
        ]
    return message


def _decoded(arguments: str):
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def content_parts(text: str) -> list[dict[str, str]]:
    """A turn's text with placeholders -> transformers' content parts, in order."""
    parts: list[dict[str, str]] = []
    pieces = _PART.split(text)
    for i, piece in enumerate(pieces):
        if i % 2:
            parts.append({"type": MODALITY_BY_PLACEHOLDER[piece]})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def read_chat_template(folder: str | Path, tokenizer) -> CheckpointChatTemplate:
    """The folder's chat template (chat_template.jinja, then chat_template.json, then the tokenizer's),
    with the media tokens of its processor_config.json (default `<image>`, `<video>`)."""
    folder = Path(folder)
    name, source = "", None
    if (folder / TEMPLATE_FILES[0]).exists():
        name, source = TEMPLATE_FILES[0], (folder / TEMPLATE_FILES[0]).read_text()
    elif (folder / TEMPLATE_FILES[1]).exists():
        name, source = TEMPLATE_FILES[1], read_json_object(folder / TEMPLATE_FILES[1]).get("chat_template")
    elif isinstance(getattr(tokenizer, "chat_template", None), str):
        name, source = "the tokenizer's chat_template", tokenizer.chat_template
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{folder}: no chat template ({', '.join(TEMPLATE_FILES)} or the tokenizer's "
                          "chat_template); hf_behaviour=transformers renders prompts with it")
    processor = read_json_object(folder / PROCESSOR_CONFIG) if (folder / PROCESSOR_CONFIG).exists() else {}
    media_tokens = []
    for modality in ("image", "video"):
        token = processor.get(f"{modality}_token") or PLACEHOLDER_BY_MODALITY[modality]
        if token != PLACEHOLDER_BY_MODALITY[modality]:
            media_tokens.append((str(token), PLACEHOLDER_BY_MODALITY[modality]))
    return CheckpointChatTemplate(name, source, tuple(media_tokens), tokenizer)
