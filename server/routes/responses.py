"""/v1/responses: POST (the Responses adapter, server/protocols/responses.py and response_output.py,
onto the pipeline), and the stored responses: GET, DELETE, GET .../input_items, through the state store.

A response with `store` (the default) is kept with its input items and output, its media by content
(server/protocols/stored_media.py), owned by the API key that made it (as a hash; another key sees a 404); `previous_response_id` continues a stored
conversation: its turns' items and outputs come before this turn's input.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from server import pipeline
from server.errors import InvalidRequest, NotReady, RouteNotFound
from server.protocols import stored_media
from server.protocols.response_output import ResponsesAdapter
from server.protocols.responses import ResponsesRequest
from server.state import ServerState, State
from server.store import StateStore, StoredResponse, StoreError, UnknownCursor, owner_hash

log = logging.getLogger("llava_serve")

router = APIRouter()


def owner_of(request: Request, state: ServerState) -> str:
    """The owner of what this request stores: its API key's hash (auth has checked it), or the anonymous one."""
    if not state.config.api_keys:
        return owner_hash(None)
    bearer = request.headers.get("authorization", "")
    scheme, _, token = bearer.strip().partition(" ")
    key = token.strip() if scheme.lower() == "bearer" and token.strip() else request.headers.get("x-api-key", "")
    return owner_hash(key.strip())


def store_of(state: ServerState) -> StateStore:
    if state.store is None:
        raise NotReady("the state database is not open")
    return state.store


def not_found(response_id: str, param: str | None = None) -> RouteNotFound:
    return RouteNotFound(f"no response {response_id!r} here", param=param)


async def history_of(store: StateStore, body: ResponsesRequest, owner: str) -> list[dict[str, Any]]:
    if body.previous_response_id is None:
        return []
    turns = await store.get_conversation(body.previous_response_id, owner)
    if turns is None:
        raise not_found(body.previous_response_id, "previous_response_id")
    blobs = await store.get_media({h for turn in turns for h in turn.media_hashes}, owner)
    return [item for turn in turns
            for item in (*stored_media.attach(turn.input_items, blobs), *turn.output.get("output", []))]


@router.post("/v1/responses")
async def create(body: ResponsesRequest, request: Request, state: State) -> Response:
    owner = owner_of(request, state)
    store = store_of(state) if body.store or body.previous_response_id else None
    history = await history_of(store, body, owner) if store is not None else []
    items = body.input_items()
    internal = body.internal(history, items)
    response_id = "resp_" + uuid.uuid4().hex

    async def save(final: dict[str, Any]) -> None:
        if not body.store or store is None:
            return
        settings = body.model_dump(exclude={"input"}, exclude_none=True)
        kept_items, blobs = stored_media.detach(items)
        record = StoredResponse(id=response_id, owner=owner, created_at=final["created_at"], model=final["model"],
                                status=final["status"], request=settings, input_items=kept_items, output=final,
                                previous_response_id=body.previous_response_id)
        try:
            await store.put_response(record, blobs)
        except (StoreError, ValueError) as e:  # the answer stands; it is just not kept
            log.warning("response %s not stored: %s", response_id, e)

    adapter = ResponsesAdapter(body, response_id, on_done=save)
    answer = await pipeline.run(state, adapter, internal, request)
    if not body.stream and answer.status_code == 200:
        await save(json.loads(bytes(answer.body)))
    return answer


@router.get("/v1/responses/{response_id}")
async def retrieve(response_id: str, request: Request, state: State) -> Response:
    stored = await store_of(state).get_response(response_id, owner_of(request, state))
    if stored is None:
        raise not_found(response_id)
    return JSONResponse(stored.output)


@router.delete("/v1/responses/{response_id}")
async def delete(response_id: str, request: Request, state: State) -> Response:
    if not await store_of(state).delete_response(response_id, owner_of(request, state)):
        raise not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request, state: State, after: str | None = None,
                      limit: int = Query(default=20, ge=1, le=100),
                      order: Literal["asc", "desc"] = "desc") -> Response:
    try:
        page = await store_of(state).list_input_items(response_id, owner_of(request, state), after=after,
                                                      limit=limit, order=order)
    except UnknownCursor:
        raise InvalidRequest(f"after: no input item {after!r} in this response", param="after") from None
    if page is None:
        raise not_found(response_id)
    data = stored_media.attach(page.data, await store_of(state).get_media(stored_media.references(page.data),
                                                                          owner_of(request, state)))
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": page.has_more})
