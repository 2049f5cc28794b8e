"""/v1/files: upload (multipart, purpose `batch`), list, retrieve, content, delete, in OpenAI's shapes.

Files live in the state database (server/store/), owned by the API key that uploaded them (as a
hash; another key gets 404). A batch's output and error files are files too (purpose
`batch_output`), owned by the batch's key. --max-file-mb bounds one file (413) and
--max-stored-file-mb what one key keeps (413).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from server.errors import InvalidRequest, RequestTooLarge, RouteNotFound
from server.routes.responses import owner_of
from server.state import State
from server.store import StoredFile, UnknownCursor

router = APIRouter()

PURPOSES = ("batch",)  # what an upload may be for here
MiB = 2**20


def file_object(file: StoredFile) -> dict[str, Any]:
    return {"id": file.id, "object": "file", "bytes": file.size_bytes, "created_at": int(file.created_at),
            "filename": file.filename, "purpose": file.purpose, "status": "processed",
            "expires_at": None if file.expires_at is None else int(file.expires_at), "status_details": None}


def not_found(file_id: str, param: str | None = None) -> RouteNotFound:
    return RouteNotFound(f"no file {file_id!r} here", param=param)


@router.post("/v1/files")
async def upload(request: Request, state: State, file: Annotated[UploadFile, File()],
                 purpose: Annotated[str, Form()]) -> Response:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r}: this server takes files for {', '.join(PURPOSES)}",
                             param="purpose")
    limits = state.config.batch
    content = await file.read(limits.max_file_bytes + 1)
    if len(content) > limits.max_file_bytes:
        raise RequestTooLarge(f"the file is larger than --max-file-mb ({limits.max_file_bytes / MiB:g} MiB)",
                              param="file")
    store = state.state_store()
    owner = owner_of(request, state)
    held = await store.stored_file_bytes(owner)
    if held + len(content) > limits.max_file_bytes_per_key:
        raise RequestTooLarge(f"this API key's files take {held / MiB:.1f} MiB; with this one they would pass "
                              f"--max-stored-file-mb ({limits.max_file_bytes_per_key / MiB:g} MiB): delete some "
                              "first", param="file")
    record = StoredFile(id="file-" + uuid.uuid4().hex, owner=owner, created_at=time.time(),
                        filename=file.filename or "upload.jsonl", purpose=purpose)
    return JSONResponse(file_object(await store.put_file(record, content)))


@router.get("/v1/files")
async def list_files(request: Request, state: State, purpose: str | None = None, after: str | None = None,
                     limit: int = Query(default=10_000, ge=1, le=10_000),
                     order: Literal["asc", "desc"] = "desc") -> Response:
    try:
        page = await state.state_store().list_files(owner_of(request, state), purpose=purpose, after=after,
                                                    limit=limit, order=order)
    except UnknownCursor:
        raise InvalidRequest(f"after: no file {after!r} in this list", param="after") from None
    data = [file_object(f) for f in page.data]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": page.has_more})


@router.get("/v1/files/{file_id}")
async def retrieve(file_id: str, request: Request, state: State) -> Response:
    file = await state.state_store().get_file(file_id, owner_of(request, state))
    if file is None:
        raise not_found(file_id)
    return JSONResponse(file_object(file))


@router.get("/v1/files/{file_id}/content")
async def content(file_id: str, request: Request, state: State) -> Response:
    data = await state.state_store().get_file_content(file_id, owner_of(request, state))
    if data is None:
        raise not_found(file_id)
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete(file_id: str, request: Request, state: State) -> Response:
    if not await state.state_store().delete_file(file_id, owner_of(request, state)):
        raise not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
