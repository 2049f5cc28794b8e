"""Tool calling: `tools`, `tool_choice`, `parallel_tool_calls` -> the prompt's tools and a grammar;
the model's answer -> OpenAI `tool_calls`, whole or as stream deltas.

The model writes calls in the Hermes format the prompt asks for (model_runtime's tool_prompt):
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. `required` and a named function
constrain the answer to such calls with a Lark grammar that embeds each function's parameter
schema (a named function: exactly one call of it; `required`: one call, or several unless
`parallel_tool_calls` is false); `auto` leaves the model free and parses
the calls out of its text; `none` leaves the tools out of the prompt. `CallParser` turns text,
piece by piece, into content and call events: content outside the blocks streams at once (a
possible opening tag and the whitespace before it are held back), a call's name is sent when its
header is complete and its arguments stream as they grow. A block whose header is not a known
function stays content, as it was written.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from model_runtime import CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR, GrammarSpec
from server.errors import InvalidRequest
from server.protocol import ChatCompletionRequest

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
# the Hermes body is written as json.dumps writes it (grammar.JSON_OPTIONS)
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for its prompt, its grammar and its answer."""

    tools: list[dict] | None = None  # OpenAI tool definitions for the prompt (None: no tools there)
    grammar: GrammarSpec | None = None  # required / named: the answer is calls only
    names: frozenset[str] = frozenset()  # functions whose calls are parsed out of the answer

    @property
    def parses_calls(self) -> bool:
        return bool(self.names)


def plan_tools(body: ChatCompletionRequest) -> ToolPlan:
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise InvalidRequest("tool_choice needs `tools`", param="tool_choice")
        return ToolPlan()
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("two tools have the same name", param="tools")
    if choice == "none":
        return ToolPlan()
    tools = [t.model_dump(exclude_none=True) for t in body.tools]
    if choice is None or choice == "auto":
        return ToolPlan(tools, None, frozenset(names))
    functions = [t.function for t in body.tools]
    if choice != "required":
        functions = [f for f in functions if f.name == choice.function.name]
        if not functions:
            raise InvalidRequest(
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice.function.name",
            )
    # NOTE: a named function is exactly one call of it (OpenAI's contract), whatever
    # parallel_tool_calls says; only `required` may repeat calls
    parallel = choice == "required" and body.parallel_tool_calls is not False
    return ToolPlan(tools, calls_grammar(functions, parallel), frozenset(names))


def calls_grammar(functions, parallel: bool) -> GrammarSpec:
    """One call (or several, separated as the prompt shows) of the given functions, nothing else."""
    rules = []
    for i, f in enumerate(functions):
        parameters = f.parameters if f.parameters is not None else {"type": "object"}
        schema = {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": _JSON_STYLE,
        }
        rules.append(f"fn{i}: %json {json.dumps(schema)}")
    body = " | ".join(f"fn{i}" for i in range(len(functions)))
    call = f"call: {json.dumps(CALL_OPEN + chr(10))} ({body}) {json.dumps(chr(10) + CALL_CLOSE)}"
    start = f"start: call ({json.dumps(CALL_SEPARATOR)} call)*" if parallel else "start: call"
    return GrammarSpec("lark", "\n".join([start, call, *rules]) + "\n")


# -- the answer -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallEvent:
    """A piece of the answer: content text, a call's start (id and name) or a piece of its arguments."""

    kind: str  # "content" | "call" | "arguments"
    text: str = ""  # content or arguments text
    index: int = 0  # the call's place in tool_calls
    call_id: str = ""
    name: str = ""


@dataclass
class CallParser:
    names: frozenset[str]
    calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments"} as found
    _buffer: str = ""
    _in_call: bool = False
    _header: re.Match | None = None
    _sent: int = 0  # arguments characters sent for the open call

    def feed(self, text: str) -> list[CallEvent]:
        self._buffer += text
        events: list[CallEvent] = []
        while True:
            step = self._call_step() if self._in_call else self._text_step()
            if step is None:
                return events
            events += step

    def finish(self) -> list[CallEvent]:
        """The end of the answer: whatever is held back goes out (an unclosed block as it stands)."""
        events = []
        if self._in_call and self._header is not None:
            rest = self._buffer[self._header.end() :][self._sent :]
            if rest:
                self.calls[-1]["arguments"] += rest
                events.append(CallEvent("arguments", rest, len(self.calls) - 1))
        elif self._in_call:
            events.append(CallEvent("content", CALL_OPEN + self._buffer))
        elif self._buffer and not (self.calls and not self._buffer.strip()):
            events.append(CallEvent("content", self._buffer))
        self._buffer = ""
        return events

    def _text_step(self) -> list[CallEvent] | None:
        start = self._buffer.find(CALL_OPEN)
        if start >= 0:
            before = self._buffer[:start]
            self._buffer = self._buffer[start + len(CALL_OPEN) :]
            self._in_call, self._header, self._sent = True, None, 0
            kept = before.rstrip() if not self.calls else before.strip()
            return [CallEvent("content", kept)] if kept else []
        hold = _partial_suffix(self._buffer, CALL_OPEN)
        hold = len(self._buffer) - len(self._buffer[: len(self._buffer) - hold].rstrip())
        ready = self._buffer[: len(self._buffer) - hold]
        if self.calls:  # text after calls: only what is not whitespace
            ready = ready.lstrip()
        if not ready:
            return None
        self._buffer = self._buffer[len(self._buffer) - hold :]
        return [CallEvent("content", ready)]

    def _call_step(self) -> list[CallEvent] | None:
        end = self._buffer.find(CALL_CLOSE)
        if self._header is None:
            header = _HEADER.match(self._buffer)
            if header is None or header.end() == len(self._buffer):  # not (yet) a header, or its end unsure
                return self._as_content(end)
            name = json.loads(f'"{header.group(1)}"')
            if name not in self.names:
                return self._as_content(end)
            self._header = header
            self.calls.append({"id": "call_" + uuid.uuid4().hex[:24], "name": name, "arguments": ""})
            index = len(self.calls) - 1
            return [CallEvent("call", index=index, call_id=self.calls[-1]["id"], name=name)]
        index = len(self.calls) - 1
        body = self._buffer[self._header.end() : end if end >= 0 else len(self._buffer)]
        if end >= 0:
            arguments = body.rstrip().removesuffix("}").rstrip()
            self._buffer = self._buffer[end + len(CALL_CLOSE) :]
            self._in_call = False
        else:
            arguments = _without_tail(body)
        piece = arguments[self._sent :]
        if not piece:
            return None if end < 0 else []
        self._sent = len(arguments)
        self.calls[index]["arguments"] = arguments
        return [CallEvent("arguments", piece, index)]

    def _as_content(self, end: int) -> list[CallEvent] | None:
        """A block that is not a call of a known function: its text, tags included, is content
        (held until the block closes, or the answer ends)."""
        if end < 0:
            return None
        raw = CALL_OPEN + self._buffer[: end + len(CALL_CLOSE)]
        self._buffer = self._buffer[end + len(CALL_CLOSE) :]
        self._in_call = False
        return [CallEvent("content", raw)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _without_tail(body: str) -> str:
    """Arguments text that is surely not the block's closing `}` and tag (held back until they come)."""
    body = body[: len(body) - _partial_suffix(body, CALL_CLOSE)].rstrip()
    return body.removesuffix("}").rstrip() if body.endswith("}") else body


def openai_calls(calls: list[dict]) -> list[dict]:
    return [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls
    ]
