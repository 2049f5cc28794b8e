"""POST /v1/chat/completions: the chat adapter (server/protocols/chat.py) onto the pipeline (server/pipeline.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server import pipeline
from server.protocol import ChatCompletionRequest
from server.protocols.chat import ChatAdapter
from server.state import State

PATH = "/v1/chat/completions"

router = APIRouter()


@router.post(PATH)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await pipeline.run(state, ChatAdapter(body), body, request)
