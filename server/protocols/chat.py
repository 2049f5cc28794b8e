"""The chat-completions answer: `ChatCompletion` from the choices' results, SSE chunks from their pieces.

The stream is a role chunk per choice, content and tool-call deltas, a finish chunk per choice
(the media reports on the last one), the optional usage chunk, then `[DONE]`; a failure after the
first byte is a final error event in OpenAI's shape. The request side is the internal request
itself (server/protocol.py's `ChatCompletionRequest`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.completion import ChoiceResult, Generation, Piece
from server.errors import APIError
from server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)


@dataclass(frozen=True)
class ChatAdapter:
    body: ChatCompletionRequest
    id_prefix: str = "chatcmpl-"

    def answer(self, gen: Generation, results: list[ChoiceResult]) -> dict:
        choices = []
        for i, r in enumerate(results):
            calls = [ToolCallOut(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
                     for c in r.calls] or None
            choices.append(Choice(
                index=i, message=AssistantMessage(content=r.text if r.text or not calls else None, tool_calls=calls),
                finish_reason=r.finish_reason,
                logprobs=ChoiceLogprobs(content=r.logprobs) if gen.wants_logprobs else None))
        return ChatCompletion(id=gen.request.request_id, created=gen.created, model=gen.model_name, choices=choices,
                              usage=gen.usage(), media=gen.media()).model_dump()

    async def stream(self, gen: Generation, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None, media: list | None = None) -> str:
            c = ChatCompletionChunk(id=gen.request.request_id, created=gen.created, model=gen.model_name,
                                    choices=choices, usage=usage, media=media)
            exclude = {"media"} if media is None else set()
            if usage is None and not include_usage:
                exclude.add("usage")
            return f"data: {c.model_dump_json(exclude=exclude)}\n\n"

        n = gen.request.params.n
        try:
            for i in range(n):
                yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
            finished = 0
            async for piece in pieces:
                logprobs = ChoiceLogprobs(content=piece.logprobs) if gen.wants_logprobs and piece.logprobs else None
                if piece.kind != "finish":
                    yield chunk([ChunkChoice(index=piece.index, delta=delta(piece), logprobs=logprobs)])
                    continue
                finished += 1
                is_last = finished == n and not include_usage
                yield chunk([ChunkChoice(index=piece.index, delta=Delta(), finish_reason=piece.finish_reason)],
                            media=gen.media() if is_last else None)
        except APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        else:
            if include_usage:
                yield chunk([], usage=gen.usage(), media=gen.media())
        yield "data: [DONE]\n\n"


def delta(piece: Piece) -> Delta:
    if piece.kind == "content":
        return Delta(content=piece.text)
    if piece.kind == "call":
        return Delta(tool_calls=[ToolCallDelta(index=piece.call_index, id=piece.call_id, type="function",
                                               function=FunctionCallDelta(name=piece.name, arguments=""))])
    return Delta(tool_calls=[ToolCallDelta(index=piece.call_index, function=FunctionCallDelta(arguments=piece.text))])
