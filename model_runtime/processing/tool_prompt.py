"""Tools in the prompt, in the Hermes format Qwen2 / Qwen2.5 (the OneVision family's LM) were tuned on.

`hermes_turns` rewrites a conversation for our own templates: the function signatures go into the
system turn inside `<tools></tools>` with the instruction to answer calls as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; an assistant turn's calls are
written in that form after its text; consecutive tool results become one user turn of
`<tool_response>` blocks. `format_call` writes one call exactly as the model is asked to, so the
grammar and the parser of the answer (server/tools.py) agree with the prompt. A checkpoint's own
Jinja template renders tools its own way (chat_template.py). Knows nothing of token ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from model_runtime.processing.conversation import ChatTurn, ToolCall

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
CALL_SEPARATOR = "\n"  # between two calls of one answer
TOOLS_INSTRUCTION = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def has_tool_turns(turns: Sequence[ChatTurn]) -> bool:
    return any(t.role == "tool" or t.tool_calls for t in turns)


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it (`arguments`: the decoded arguments object)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def hermes_turns(
    turns: Sequence[ChatTurn], tools: Sequence[dict] | None, default_system: str
) -> list[ChatTurn]:
    """`turns` with tools, tool calls and tool results written out as text (roles system/user/assistant)."""
    out: list[ChatTurn] = []
    if tools:
        systems = [t.text for t in turns if t.role == "system"]
        system = "\n".join(systems) if systems else default_system
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        out.append(
            ChatTurn("system", (system + "\n\n" if system else "") + TOOLS_INSTRUCTION.format(tools=listing))
        )
        turns = [t for t in turns if t.role != "system"]
    for i, turn in enumerate(turns):
        if turn.role == "tool":
            block = f"{RESPONSE_OPEN}\n{turn.text}\n{RESPONSE_CLOSE}"
            if i and turns[i - 1].role == "tool":  # consecutive results share one user turn
                out[-1] = ChatTurn("user", out[-1].text + "\n" + block)
            else:
                out.append(ChatTurn("user", block))
        elif turn.tool_calls:
            calls = CALL_SEPARATOR.join(format_call(c.name, _arguments(c)) for c in turn.tool_calls)
            out.append(ChatTurn("assistant", (turn.text + "\n" if turn.text else "") + calls))
        else:
            out.append(turn)
    return out


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments  # not JSON: kept as the string it is
