"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API): wire models and the adapter.

Request -> the internal request: `system` becomes a system message; `text` and `image` blocks
(base64 or url sources) user content parts; `tool_use` blocks an assistant's tool calls (input as
JSON text); `tool_result` blocks tool messages; `tools[].input_schema` function parameters;
`tool_choice` auto / any / tool / none as chat's auto / required / named / none;
`stop_sequences` chat's `stop`. Answer -> a `message` with text and tool_use blocks, or
Anthropic's stream (message_start, content_block_start / ping / content_block_delta /
content_block_stop per block, message_delta with stop_reason and usage, message_stop; a failure
is an `error` event). Errors are rendered in Anthropic's shape by the app (server/endpoints.py).
Fields this server cannot honour (`thinking`, `container`, `mcp_servers`, ...) are a 400 naming them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from server.completion import ChoiceResult, Generation, Piece
from server.errors import APIError, InvalidRequest
from server.protocol import MAX_STOP_STRINGS, ChatCompletionRequest, _Lenient

REFUSED_FIELDS = ("thinking", "container", "mcp_servers", "context_management", "citations")


class ImageSource(_Lenient):
    type: str = ""  # "base64" | "url" (checked where it is read, so the error names the block)
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ContentBlock(_Lenient):
    type: str
    text: str | None = None
    source: ImageSource | None = None  # image
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: dict[str, Any] | None = None  # tool_use
    tool_use_id: str | None = None  # tool_result
    content: str | list[ContentBlock] | None = None  # tool_result
    is_error: bool | None = None  # tool_result
    cache_control: Any = None  # accepted: prefix caching is automatic


class Message(_Lenient):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolDefinition(_Lenient):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None  # "custom" or absent; server tools are refused
    cache_control: Any = None


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class CountTokensRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Any = None
    container: Any = None
    mcp_servers: Any = None
    context_management: Any = None
    citations: Any = None

    def internal(self, **sampling: Any) -> ChatCompletionRequest:
        for name in REFUSED_FIELDS:
            if getattr(self, name) is not None:
                raise InvalidRequest(f"`{name}` is not supported by this server", param=name)
        messages = [*system_messages(self.system), *chat_messages(self.messages)]
        tools = [tool_definition(t, i) for i, t in enumerate(self.tools or [])] or None
        body: dict[str, Any] = {"model": self.model, "messages": messages, "tools": tools, **sampling}
        choice = self.tool_choice
        if choice is not None:
            if choice.type == "tool" and not choice.name:
                raise InvalidRequest("tool_choice of type tool needs `name`", param="tool_choice.name")
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
                choice.type, {"type": "function", "function": {"name": choice.name}})
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
            if tools is None and choice.type != "none":
                raise InvalidRequest("tool_choice needs `tools`", param="tool_choice")
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as e:  # a value the Messages models let through and chat's do not
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}", param=where or None) from None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None  # accepted (user_id); nothing is done with it
    service_tier: Any = None

    def internal_request(self) -> ChatCompletionRequest:
        if any(not s for s in self.stop_sequences or ()):
            raise InvalidRequest("stop_sequences must not be empty strings", param="stop_sequences")
        return self.internal(max_tokens=self.max_tokens, stop=self.stop_sequences, stream=self.stream,
                             temperature=1.0 if self.temperature is None else self.temperature,
                             top_p=self.top_p, top_k=self.top_k or 0)


def system_messages(system: str | list[ContentBlock] | None) -> list[dict]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    for i, block in enumerate(system):
        if block.type != "text" or block.text is None:
            raise InvalidRequest("system blocks are text blocks", param=f"system[{i}]")
    return [{"role": "system", "content": "".join(b.text or "" for b in system)}]


def chat_messages(messages: list[Message]) -> list[dict]:
    out: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(assistant_message(message.content, where))
        else:
            out.extend(user_messages(message.content, where))
    return out


def assistant_message(blocks: list[ContentBlock], where: str) -> dict:
    texts, calls = [], []
    for j, block in enumerate(blocks):
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "tool_use":
            if not block.id or not block.name:
                raise InvalidRequest("a tool_use block needs `id` and `name`", param=f"{where}.content[{j}]")
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input or {})}})
        else:
            raise InvalidRequest(f"an assistant message takes text and tool_use blocks, not {block.type!r}",
                                 param=f"{where}.content[{j}].type")
    return {"role": "assistant", "content": "".join(texts) or None, "tool_calls": calls or None}


def user_messages(blocks: list[ContentBlock], where: str) -> list[dict]:
    """Tool results first (each a tool message, as chat has them), then the user's own parts."""
    results: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        param = f"{where}.content[{j}]"
        if block.type == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": result_text(block, param)})
        elif block.type == "text":
            parts.append({"type": "text", "text": block.text if block.text is not None else ""})
        elif block.type == "image":
            parts.append({"type": "image_url", "image_url": {"url": image_url(block, param)}})
        else:
            raise InvalidRequest(f"content block type {block.type!r} is not supported here; use text, image, "
                                 "tool_use or tool_result", param=f"{param}.type")
    if not results and not parts:
        raise InvalidRequest("a message needs at least one content block", param=f"{where}.content")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def result_text(block: ContentBlock, param: str) -> str:
    if block.tool_use_id is None:
        raise InvalidRequest("a tool_result block needs `tool_use_id`", param=f"{param}.tool_use_id")
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        if any(b.type != "text" for b in content):
            raise InvalidRequest("tool_result content is text here (images go in the user's own blocks)",
                                 param=f"{param}.content")
        text = "".join(b.text or "" for b in content)
    return ("Error: " + text) if block.is_error else text


def image_url(block: ContentBlock, param: str) -> str:
    source = block.source
    if source is None:
        raise InvalidRequest("an image block needs `source`", param=f"{param}.source")
    if source.type not in ("base64", "url"):
        raise InvalidRequest(f"image source type {source.type!r} is not supported; use base64 or url",
                             param=f"{param}.source.type")
    if source.type == "url":
        if not source.url:
            raise InvalidRequest("a url source needs `url`", param=f"{param}.source.url")
        return source.url
    if not source.data or not source.media_type:
        raise InvalidRequest("a base64 source needs `media_type` and `data`", param=f"{param}.source")
    return f"data:{source.media_type};base64,{source.data}"


def tool_definition(tool: ToolDefinition, i: int) -> dict:
    if tool.type not in (None, "custom"):
        raise InvalidRequest(f"server tools ({tool.type!r}) are not supported here", param=f"tools[{i}].type")
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": tool.input_schema}}


# -- the answer ---------------------------------------------------------------------------------
class MessagesUsage(BaseModel):
    input_tokens: int  # every prompt token (cache reads included): what count_tokens says
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


def stop_reason(finish_reason: str | None, stop: str | int | None) -> tuple[str, str | None]:
    """Chat's finish reason (and the stop that ended it) -> Anthropic's stop_reason and stop_sequence."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "stop" and isinstance(stop, str):
        return "stop_sequence", stop
    return "end_turn", None


def usage(gen: Generation) -> MessagesUsage:
    return MessagesUsage(input_tokens=gen.request.num_prompt_tokens, output_tokens=gen.choices[0].num_tokens,
                         cache_read_input_tokens=gen.num_cached_tokens)


def sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


@dataclass(frozen=True)
class MessagesAdapter:
    id_prefix: str = "msg_"

    def answer(self, gen: Generation, results: list[ChoiceResult]) -> dict:
        r = results[0]
        content: list[dict] = [{"type": "text", "text": r.text}] if r.text or not r.calls else []
        content += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": call_input(c["arguments"])}
                    for c in r.calls]
        reason, sequence = stop_reason(r.finish_reason, r.stop_reason)
        return {"id": gen.request.request_id, "type": "message", "role": "assistant", "model": gen.model_name,
                "content": content, "stop_reason": reason, "stop_sequence": sequence,
                "usage": usage(gen).model_dump(), "media": gen.media()}

    async def stream(self, gen: Generation, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        start: dict[str, Any] = {
            "id": gen.request.request_id, "type": "message", "role": "assistant", "model": gen.model_name,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": MessagesUsage(input_tokens=gen.request.num_prompt_tokens, output_tokens=0).model_dump(),
        }
        yield sse({"type": "message_start", "message": start})
        blocks = Blocks()
        try:
            async for piece in pieces:
                if piece.kind == "finish":
                    for event in blocks.close():
                        yield sse(event)
                    reason, sequence = stop_reason(piece.finish_reason, piece.stop_reason)
                    u = usage(gen)
                    yield sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                               "usage": {"output_tokens": u.output_tokens,
                                         "cache_read_input_tokens": u.cache_read_input_tokens}})
                    continue
                for event in blocks.add(piece):
                    yield sse(event)
        except APIError as e:
            yield sse(e.body("anthropic"))
            return
        yield sse({"type": "message_stop"})


def call_input(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:  # a call the model left unfinished (auto, cut by max_tokens): its text as it stands
        return {"_raw_arguments": arguments}


@dataclass
class Blocks:
    """The content blocks of a streamed message: which one is open, and its index."""

    index: int = -1
    kind: str | None = None  # "text" | "tool_use" while one is open

    def add(self, piece: Piece) -> list[dict]:
        events: list[dict] = []
        if piece.kind == "call":
            events += self.close()
            events += self._open({"type": "tool_use", "id": piece.call_id, "name": piece.name, "input": {}})
            return events
        if piece.kind == "arguments":
            return [{"type": "content_block_delta", "index": self.index,
                     "delta": {"type": "input_json_delta", "partial_json": piece.text}}]
        if not piece.text:
            return []
        if self.kind != "text":
            events += self.close()
            events += self._open({"type": "text", "text": ""})
        events.append({"type": "content_block_delta", "index": self.index,
                       "delta": {"type": "text_delta", "text": piece.text}})
        return events

    def close(self) -> list[dict]:
        if self.kind is None:
            return []
        self.kind = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _open(self, block: dict) -> list[dict]:
        self.index += 1
        self.kind = block["type"]
        events = [{"type": "content_block_start", "index": self.index, "content_block": block}]
        return events + ([{"type": "ping"}] if self.index == 0 else [])
