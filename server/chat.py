"""OpenAI messages -> conversation turns with media placeholders + the media references in order.

Knows the OpenAI message shapes, not the checkpoint's template (the model runtime renders that).
User text that contains a placeholder or a special token is refused, never spliced as media.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_runtime import ChatTurn, InvalidPromptError, Processor
from server.errors import InvalidRequest, UnsupportedMedia
from server.protocol import ChatMessage

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class MediaRef:
    modality: str  # "image"
    url: str
    param: str  # where it came from, e.g. messages[0].content[1].image_url


@dataclass(frozen=True)
class RenderedChat:
    turns: list[ChatTurn]
    media: list[MediaRef]


def render(messages: list[ChatMessage], processor: Processor) -> RenderedChat:
    turns: list[ChatTurn] = []
    media: list[MediaRef] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None:
            content = ""
        if isinstance(content, str):
            _check_text(processor, content, f"messages[{i}].content")
            turns.append(ChatTurn(role, content))
            continue
        pieces: list[str] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text is None:
                    raise InvalidRequest("a text part needs `text`", param=f"{where}.text")
                _check_text(processor, part.text, f"{where}.text")
                pieces.append(part.text)
            elif part.type == "image_url":
                if role != "user":
                    raise InvalidRequest("images are accepted in user messages only", param=where)
                if part.image_url is None:
                    raise InvalidRequest("an image_url part needs `image_url.url`", param=f"{where}.image_url")
                media.append(MediaRef("image", part.image_url.url, f"{where}.image_url"))
                pieces.append(IMAGE_PLACEHOLDER + "\n")
            else:
                raise UnsupportedMedia(f"content part type {part.type!r} is not supported", param=f"{where}.type")
        turns.append(ChatTurn(role, "".join(pieces)))
    return RenderedChat(turns, media)


def _check_text(processor: Processor, text: str, param: str) -> None:
    try:
        processor.check_user_text(text)
    except InvalidPromptError as e:
        raise InvalidRequest(str(e), param=param) from e
