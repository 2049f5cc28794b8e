"""POST /v1/responses (OpenAI's Responses API), the request side: the wire model and its internal request.

`input` (a string, or items: messages with input_text / input_image / our video and audio parts,
an assistant's output_text, function_call and function_call_output) becomes chat messages, after
the stored turns of `previous_response_id` (their input items and output, instructions not
carried over, as OpenAI) and `instructions` as the system message. `text.format` becomes chat's
`response_format` (the same grammar), function `tools` and `tool_choice` chat's, and
`max_output_tokens` / `temperature` / `top_p` / `top_logprobs` / `seed` the sampling fields.
Fields this server cannot honour are a 400 naming them. The answer side is response_output.py.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, ValidationError

from server.errors import InvalidRequest
from server.protocol import MAX_TOP_LOGPROBS, ChatCompletionRequest, _Lenient

CHAT_PART_TYPES = ("video_url", "input_audio", "audio_url", "image_url", "text")  # our extension: chat's parts
REFUSED_FIELDS = {"background": (False,), "conversation": (), "prompt": (), "reasoning": (),
                  "truncation": ("disabled",), "max_tool_calls": ()}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: Any = None


class FunctionTool(_Lenient):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesRequest(_Lenient):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = None  # extension (as chat)
    include: list[str] | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: Any = None
    background: Any = None
    conversation: Any = None
    prompt: Any = None
    reasoning: Any = None
    truncation: Any = None
    max_tool_calls: Any = None

    def check_refused(self) -> None:
        for name, accepted in REFUSED_FIELDS.items():
            value = getattr(self, name)
            if value is not None and value not in accepted:
                raise InvalidRequest(f"`{name}` is not supported by this server", param=name)

    def input_items(self) -> list[dict[str, Any]]:
        """This turn's input as items, each with an id (what a stored response keeps)."""
        if isinstance(self.input, str):
            items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": self.input}]
        else:
            items = [dict(item) for item in self.input]
        for item in items:
            item.setdefault("type", "message")
            item.setdefault("id", f"{'msg' if item['type'] == 'message' else 'item'}_{uuid.uuid4().hex}")
        return items

    def internal(self, history: list[dict[str, Any]], items: list[dict[str, Any]]) -> ChatCompletionRequest:
        """The internal request: `history` (earlier turns' items, oldest first) then this turn's `items`."""
        self.check_refused()
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        wants_logprobs = self.top_logprobs is not None or LOGPROBS_INCLUDE in (self.include or ())
        body: dict[str, Any] = {
            "model": self.model, "messages": system + chat_messages(history, items), "stream": self.stream,
            "max_tokens": self.max_output_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "seed": self.seed, "logprobs": wants_logprobs, "top_logprobs": self.top_logprobs,
            "response_format": response_format(self.text), "tools": tools(self.tools),
            "tool_choice": tool_choice(self.tool_choice), "parallel_tool_calls": self.parallel_tool_calls,
        }
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as e:  # a value the Responses model let through and chat's does not
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise InvalidRequest(f"{where}: {first.get('msg', 'invalid value')}", param=where or None) from None


def chat_messages(history: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict]:
    out: list[dict] = []
    for where, item in [*((f"previous_response_id[{i}]", x) for i, x in enumerate(history)),
                        *((f"input[{i}]", x) for i, x in enumerate(items))]:
        kind = item.get("type", "message")
        if kind == "message":
            out.append(message(item, where))
        elif kind == "function_call":
            call = {"id": _text(item, "call_id", where), "type": "function",
                    "function": {"name": _text(item, "name", where), "arguments": _text(item, "arguments", where)}}
            if out and out[-1]["role"] == "assistant":
                out[-1]["tool_calls"] = [*(out[-1].get("tool_calls") or []), call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise InvalidRequest("a function_call_output needs `output` text", param=f"{where}.output")
            out.append({"role": "tool", "tool_call_id": _text(item, "call_id", where), "content": output})
        else:
            raise InvalidRequest(f"input item type {kind!r} is not supported here; use message, function_call "
                                 "or function_call_output", param=f"{where}.type")
    return out


def message(item: dict[str, Any], where: str) -> dict:
    role, content = item.get("role"), item.get("content")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest("a message's role is user, assistant, system or developer", param=f"{where}.role")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("a message's content is text or a list of parts", param=f"{where}.content")
    return {"role": role, "content": [part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]}


def part(p: Any, where: str) -> dict:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _text(p, "text", where)}
    if kind == "input_image":
        url = p.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest("an input_image needs `image_url` (an https or data URL; file_id is not supported)",
                                 param=f"{where}.image_url")
        return {"type": "image_url", "image_url": {"url": url, "detail": p.get("detail")}}
    if kind in CHAT_PART_TYPES:
        return p
    raise InvalidRequest(f"content part type {kind!r} is not supported here; use input_text, input_image "
                         "(or chat's video_url, input_audio, audio_url)", param=f"{where}.type")


def _text(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"`{key}` must be a string", param=f"{where}.{key}")
    return value


def response_format(text: TextConfig | None) -> dict | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None:
        raise InvalidRequest("a json_schema format needs `name`", param="text.format.name")
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "description": fmt.description,
                                                   "schema": fmt.json_schema, "strict": fmt.strict}}


def tools(given: list[FunctionTool] | None) -> list[dict] | None:
    out = []
    for i, t in enumerate(given or []):
        if t.type != "function":
            raise InvalidRequest(f"tool type {t.type!r} is not supported here (function tools only)",
                                 param=f"tools[{i}].type")
        if not t.name:
            raise InvalidRequest("a function tool needs `name`", param=f"tools[{i}].name")
        out.append({"type": "function", "function": {"name": t.name, "description": t.description,
                                                     "parameters": t.parameters, "strict": t.strict}})
    return out or None


def tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("tool_choice is none, auto, required or {type: function, name}", param="tool_choice")
