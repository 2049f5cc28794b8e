"""POST /v1/responses, the answer side: the `response` object, whole or as the Responses stream.

Output items: a `message` with one `output_text` part (when there is text, or no call), then one
`function_call` item per call. `status` is completed, or incomplete with
`incomplete_details.reason` max_output_tokens; `usage` has `input_tokens_details.cached_tokens`
(prefix-cache hits) and our per-modality details. The stream is OpenAI's event sequence, each
event with its `sequence_number`: response.created, response.in_progress, then per item
output_item.added / content_part.added / output_text.delta... / output_text.done /
content_part.done / output_item.done (a call: output_item.added /
function_call_arguments.delta... / .done / output_item.done), then response.completed or
response.incomplete; a failure is response.failed. `on_done` gets the final object (the route
stores it), however it was delivered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.completion import ChoiceResult, Generation, Piece
from server.errors import APIError
from server.protocols.responses import ResponsesRequest


def usage(gen: Generation) -> dict[str, Any]:
    details = gen.usage_details()
    out_tokens = gen.choices[0].num_tokens
    return {"input_tokens": gen.request.num_prompt_tokens,
            "input_tokens_details": {"cached_tokens": gen.num_cached_tokens, "text_tokens": details.text_tokens,
                                     "image_tokens": details.image_tokens, "video_tokens": details.video_tokens,
                                     "audio_tokens": details.audio_tokens},
            "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": gen.request.num_prompt_tokens + out_tokens}


def message_item(item_id: str, text: str, logprobs: list[dict], status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [text_part(text, logprobs)]}


def text_part(text: str, logprobs: list[dict]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def call_item(item_id: str, call: dict, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": call["name"],
            "arguments": call["arguments"], "status": status}


@dataclass
class ResponsesAdapter:
    body: ResponsesRequest
    response_id: str  # resp_..., chosen by the route (a stored response is found by it)
    on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None  # store the final object
    created_at: int = field(default_factory=lambda: int(time.time()))
    id_prefix: str = "resp-"

    def shell(self, gen: Generation | None, status: str, output: list[dict]) -> dict[str, Any]:
        """The response object around `output` (status in_progress while streaming)."""
        b = self.body
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else None
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": status,
            "error": None, "incomplete_details": None, "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens, "model": gen.model_name if gen else b.model, "output": output,
            "parallel_tool_calls": b.parallel_tool_calls is not False, "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": b.store,
            "temperature": 1.0 if b.temperature is None else b.temperature, "text": {"format": fmt or {"type": "text"}},
            "tool_choice": b.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in b.tools or []],
            "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": "disabled", "usage": None,
            "user": b.user, "metadata": b.metadata or {},
        }

    def final(self, gen: Generation, output: list[dict], finish_reason: str | None) -> dict[str, Any]:
        is_incomplete = finish_reason == "length"
        response = self.shell(gen, "incomplete" if is_incomplete else "completed", output)
        if is_incomplete:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        response["usage"] = usage(gen)
        response["media"] = gen.media()
        return response

    def answer(self, gen: Generation, results: list[ChoiceResult]) -> dict:
        r = results[0]
        status = "incomplete" if r.finish_reason == "length" else "completed"
        logprobs = [lp.model_dump() for lp in r.logprobs] if gen.wants_logprobs else []
        output = [message_item("msg_" + uuid.uuid4().hex, r.text, logprobs, status)] if r.text or not r.calls else []
        output += [call_item("fc_" + uuid.uuid4().hex, c) for c in r.calls]
        return self.final(gen, output, r.finish_reason)

    async def stream(self, gen: Generation, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        events = Events()
        yield events.sse("response.created", response=self.shell(gen, "in_progress", []))
        yield events.sse("response.in_progress", response=self.shell(gen, "in_progress", []))
        try:
            async for piece in pieces:
                if piece.kind == "finish":
                    for event in events.finish("incomplete" if piece.finish_reason == "length" else "completed"):
                        yield event
                    final = self.final(gen, events.output, piece.finish_reason)
                    if self.on_done is not None:
                        await self.on_done(final)
                    yield events.sse("response." + final["status"], response=final)
                    continue
                for event in events.add(piece, gen.wants_logprobs):
                    yield event
        except APIError as e:
            failed = self.shell(gen, "failed", events.output)
            failed["error"] = {"code": e.code, "message": e.message}
            yield events.sse("response.failed", response=failed)


@dataclass
class Events:
    """The stream's numbered events, and the output items as they are built."""

    output: list[dict] = field(default_factory=list)
    sequence_number: int = 0
    open_kind: str | None = None  # "message" | "function_call" while an item is open
    text: list[str] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)

    def sse(self, kind: str, **fields: Any) -> str:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {kind}\ndata: {json.dumps(event)}\n\n"

    @property
    def _at(self) -> dict[str, Any]:
        return {"item_id": self.output[-1]["id"], "output_index": len(self.output) - 1}

    def add(self, piece: Piece, wants_logprobs: bool) -> list[str]:
        out: list[str] = []
        if piece.kind == "call":
            out += self.close("completed")
            item = call_item("fc_" + uuid.uuid4().hex, {"id": piece.call_id, "name": piece.name, "arguments": ""},
                             "in_progress")
            return out + self._open(item)
        if piece.kind == "arguments":
            self.output[-1]["arguments"] += piece.text
            return [self.sse("response.function_call_arguments.delta", **self._at, delta=piece.text)]
        if self.open_kind != "message":
            out += self.close("completed")
            out += self._open(message_item("msg_" + uuid.uuid4().hex, "", [], "in_progress"))
            out.append(self.sse("response.content_part.added", **self._at, content_index=0, part=text_part("", [])))
        lps = [lp.model_dump() for lp in piece.logprobs or []] if wants_logprobs else []
        self.text.append(piece.text)
        self.logprobs += lps
        if piece.text or lps:
            out.append(self.sse("response.output_text.delta", **self._at, content_index=0, delta=piece.text,
                                logprobs=lps))
        return out

    def _open(self, item: dict[str, Any]) -> list[str]:
        self.output.append(item)
        self.open_kind = item["type"]
        return [self.sse("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def finish(self, status: str) -> list[str]:
        """The last item's closing events; with nothing at all said, an empty message first (as `answer`)."""
        if self.output:
            return self.close(status)
        out = self._open(message_item("msg_" + uuid.uuid4().hex, "", [], "in_progress"))
        out.append(self.sse("response.content_part.added", **self._at, content_index=0, part=text_part("", [])))
        return out + self.close(status)

    def close(self, status: str) -> list[str]:
        """The open item's closing events (none when no item is open)."""
        if self.open_kind is None:
            return []
        item, out = self.output[-1], []
        if self.open_kind == "message":
            text = "".join(self.text)
            out.append(self.sse("response.output_text.done", **self._at, content_index=0, text=text,
                                logprobs=self.logprobs))
            item["content"] = [text_part(text, self.logprobs)]
            out.append(self.sse("response.content_part.done", **self._at, content_index=0, part=item["content"][0]))
            self.text, self.logprobs = [], []
        else:
            out.append(self.sse("response.function_call_arguments.done", **self._at, name=item["name"],
                                arguments=item["arguments"]))
        item["status"] = status if self.open_kind == "message" else "completed"
        self.open_kind = None
        out.append(self.sse("response.output_item.done", output_index=len(self.output) - 1, item=item))
        return out
