"""/v1/batches: create from an uploaded file, retrieve, list, cancel, in OpenAI's shapes and lifecycle.

Creating one checks every line of its input file (server/batch/lines.py): a file that fails gives
a `failed` batch with each error and its line number; a good one is queued whole (`validating`,
then `in_progress` once a batch runner sees it) and worked by the runners of every server on the
state database (server/batch/runner.py). Counts come from its lines. Owned by the key that
created it (another key gets 404); --max-active-batches bounds one key's unfinished ones (429).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from server.batch.lines import parse_input
from server.batch.runner import ACTIVE
from server.errors import APIError, InvalidRequest, RouteNotFound
from server.routes.files import not_found as file_not_found
from server.routes.responses import owner_of
from server.state import State
from server.store import Batch, StateStore, UnknownCursor

router = APIRouter()

WINDOW_S = 86_400  # completion_window 24h, the one OpenAI offers
TIMES = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
         "cancelling_at", "cancelled_at")


class TooManyBatches(APIError):
    status = 429
    code = "batch_limit_reached"


class NotCancellable(APIError):
    status = 409
    code = "batch_not_cancellable"


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/responses", "/v1/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


async def batch_object(store: StateStore, batch: Batch) -> dict[str, Any]:
    counts = await store.count_lines(batch.id)
    times = {name: int(batch.times[name]) if name in batch.times else None for name in TIMES}
    times["expires_at"] = None if batch.expires_at is None else int(batch.expires_at)
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
        "errors": None if batch.errors is None else {"object": "list", "data": batch.errors},
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at), **times,
        "request_counts": {"total": sum(counts.values()), "completed": counts["succeeded"],
                           "failed": counts["failed"]},
        "metadata": batch.metadata,
    }


def not_found(batch_id: str) -> RouteNotFound:
    return RouteNotFound(f"no batch {batch_id!r} here")


@router.post("/v1/batches")
async def create(body: CreateBatch, request: Request, state: State) -> Response:
    store = state.state_store()
    owner = owner_of(request, state)
    file = await store.get_file(body.input_file_id, owner)
    if file is None:
        raise file_not_found(body.input_file_id, "input_file_id")
    if file.purpose != "batch":
        raise InvalidRequest(f"input_file_id: file {file.id!r} has purpose {file.purpose!r}, not batch",
                             param="input_file_id")
    limit = state.config.batch.max_active_batches_per_key
    if await store.count_batches(owner, ACTIVE) >= limit:
        raise TooManyBatches(f"this API key has {limit} batches not yet finished (--max-active-batches); wait for "
                             "one to finish or cancel one")
    content = await store.get_file_content(file.id, owner) or b""
    parsed = await asyncio.to_thread(parse_input, content, body.endpoint, state.config.served_model_name)
    now = time.time()
    batch = Batch(id="batch_" + uuid.uuid4().hex, owner=owner, created_at=now, endpoint=body.endpoint,
                  input_file_id=file.id, completion_window=body.completion_window, status="validating",
                  metadata=body.metadata, expires_at=now + WINDOW_S)
    if parsed.errors:
        batch = replace(batch, status="failed", errors=parsed.errors, times={"failed_at": now})
        created = await store.create_batch(batch, [])
    else:
        created = await store.create_batch(batch, parsed.lines)
    return JSONResponse(await batch_object(store, created))


@router.get("/v1/batches/{batch_id}")
async def retrieve(batch_id: str, request: Request, state: State) -> Response:
    store = state.state_store()
    batch = await store.get_batch(batch_id, owner_of(request, state))
    if batch is None:
        raise not_found(batch_id)
    return JSONResponse(await batch_object(store, batch))


@router.get("/v1/batches")
async def list_batches(request: Request, state: State, after: str | None = None,
                       limit: int = Query(default=20, ge=1, le=100)) -> Response:
    store = state.state_store()
    try:
        page = await store.list_batches(owner_of(request, state), after=after, limit=limit)
    except UnknownCursor:
        raise InvalidRequest(f"after: no batch {after!r} in this list", param="after") from None
    data = [await batch_object(store, b) for b in page.data]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": page.has_more})


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel(batch_id: str, request: Request, state: State) -> Response:
    store = state.state_store()
    batch = await store.get_batch(batch_id, owner_of(request, state))
    if batch is None:
        raise not_found(batch_id)
    if batch.status in ("validating", "in_progress"):
        moved = await store.set_batch_status(batch.id, "cancelling", expected=("validating", "in_progress"))
        if moved is not None:
            await store.cancel_lines(batch.id)  # the lines running finish; the runner then writes the files
            batch = moved
        else:
            batch = await store.get_batch(batch_id, batch.owner) or batch
    if batch.status not in ("cancelling", "cancelled"):
        raise NotCancellable(f"batch {batch_id!r} is {batch.status}; only a validating or in_progress batch can be "
                             "cancelled")
    return JSONResponse(await batch_object(store, batch))
