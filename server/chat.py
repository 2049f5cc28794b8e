"""OpenAI messages -> conversation turns with media placeholders + the media references in order.

Knows the OpenAI message shapes, not the checkpoint's template (the model runtime renders that,
tool calls and tool results included).
Item counts and the model's modalities are checked here, before anything is fetched. User text
that contains a placeholder or a special token is refused, never spliced as media.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_runtime import PLACEHOLDER_BY_MODALITY, ChatTurn, InvalidPromptError, Processor, ToolCall
from server.config import MODALITIES, MediaLimits
from server.errors import InvalidRequest, TooManyMediaItems, UnsupportedMedia, from_runtime
from server.protocol import ChatMessage, ContentPart

PART_FIELDS = {"text": "text", "image_url": "image_url", "video_url": "video_url", "input_audio": "input_audio",
               "audio_url": "audio_url"}


@dataclass(frozen=True)
class MediaRef:
    """One media content part, in request order."""

    modality: str  # "image" | "video" | "audio"
    param: str  # where it came from, e.g. messages[0].content[1].image_url
    url: str | None = None  # image_url / video_url / audio_url
    audio_data: str | None = None  # input_audio: base64
    audio_format: str | None = None  # input_audio: wav | mp3 | flac | ogg
    num_frames: int | None = None  # video_url
    fps: float | None = None  # video_url
    use_audio: bool = False  # video_url: its audio track becomes an audio item right after it
    detail: str | None = None  # image_url: "low" (the base view only) | "high" | "auto" (the checkpoint's way)


@dataclass(frozen=True)
class RenderedChat:
    turns: list[ChatTurn]
    media: list[MediaRef]


def render(messages: list[ChatMessage], processor: Processor, limits: MediaLimits) -> RenderedChat:
    turns: list[ChatTurn] = []
    media: list[MediaRef] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content if message.content is not None else ""
        calls = _tool_calls(message, processor, f"messages[{i}]")
        if isinstance(content, str):
            _check_text(processor, content, f"messages[{i}].content")
            turns.append(ChatTurn(role, content, calls, message.tool_call_id))
            continue
        pieces: list[str] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text is None:
                    raise InvalidRequest("a text part needs `text`", param=f"{where}.text")
                _check_text(processor, part.text, f"{where}.text")
                pieces.append(part.text)
                continue
            if part.type not in PART_FIELDS:
                raise InvalidRequest(
                    f"content part type {part.type!r} is not known; use {', '.join(PART_FIELDS)}", param=f"{where}.type"
                )
            ref = _media_ref(part, f"{where}.{PART_FIELDS[part.type]}")
            if role != "user":
                raise InvalidRequest("media is accepted in user messages only", param=where)
            media.append(ref)
            pieces.append(PLACEHOLDER_BY_MODALITY[ref.modality] + "\n")
            if ref.use_audio:
                pieces.append(PLACEHOLDER_BY_MODALITY["audio"] + "\n")
        turns.append(ChatTurn(role, "".join(pieces), calls, message.tool_call_id))
    check_media(media, processor, limits)
    return RenderedChat(turns, media)


def _tool_calls(message: ChatMessage, processor: Processor, where: str) -> tuple[ToolCall, ...]:
    if message.role == "tool" and message.tool_call_id is None:
        raise InvalidRequest("a tool message needs `tool_call_id`", param=f"{where}.tool_call_id")
    if not message.tool_calls:
        return ()
    if message.role != "assistant":
        raise InvalidRequest("only assistant messages carry tool_calls", param=f"{where}.tool_calls")
    calls = []
    for j, call in enumerate(message.tool_calls):
        param = f"{where}.tool_calls[{j}].function"
        _check_text(processor, call.function.name, f"{param}.name")
        _check_text(processor, call.function.arguments, f"{param}.arguments")
        calls.append(ToolCall(call.function.name, call.function.arguments, call.id))
    return tuple(calls)


def check_media(media: list[MediaRef], processor: Processor, limits: MediaLimits) -> None:
    """The model takes each modality, and the counts are within the limits (before any fetch)."""
    supported = processor.modalities
    for ref in media:
        for modality in (ref.modality, "audio") if ref.use_audio else (ref.modality,):
            if modality not in supported:
                raise UnsupportedMedia(f"this model does not take {modality} input", param=ref.param)
    for modality in MODALITIES:
        count = sum(1 for r in media if r.modality == modality) + (
            sum(1 for r in media if r.use_audio) if modality == "audio" else 0
        )
        if count > limits.max_items(modality):
            raise TooManyMediaItems(
                f"the request has {count} {modality} items; at most {limits.max_items(modality)} are accepted"
                + (" (a video with use_audio counts as one audio item)" if modality == "audio" else ""),
                param="messages",
            )


def _media_ref(part: ContentPart, param: str) -> MediaRef:
    value = getattr(part, PART_FIELDS[part.type])
    if value is None:
        raise InvalidRequest(f"a {part.type} part needs `{part.type}`", param=param)
    if part.type == "image_url":
        return MediaRef("image", param, url=value.url, detail=value.detail)
    if part.type == "video_url":
        return MediaRef("video", param, url=value.url, num_frames=value.num_frames, fps=value.fps,
                        use_audio=value.use_audio)
    if part.type == "audio_url":
        return MediaRef("audio", param, url=value.url)
    return MediaRef("audio", param, audio_data=value.data, audio_format=value.format)


def _check_text(processor: Processor, text: str, param: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800"): no tokenizer takes it
            raise InvalidRequest("the text is not valid Unicode (it holds a lone surrogate)", param=param) from e
    try:
        processor.check_user_text(text)
    except InvalidPromptError as e:
        raise from_runtime(e, param) from e
