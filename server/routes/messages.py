"""POST /v1/messages and /v1/messages/count_tokens: the Messages adapter (server/protocols/messages.py)
onto the pipeline; errors in Anthropic's shape (server/endpoints.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import pipeline
from server.protocols.messages import CountTokensRequest, MessagesAdapter, MessagesRequest
from server.state import State

router = APIRouter()


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request, state: State) -> Response:
    return await pipeline.run(state, MessagesAdapter(), body.internal_request(), request)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request, state: State) -> Response:
    try:
        counted = await pipeline.count_prompt(state, body.internal(), request)
    except pipeline.ClientGone:
        return Response(status_code=499)
    return JSONResponse({"input_tokens": counted.prompt.num_tokens})
