"""Uploaded files (`/v1/files`) with their bytes: the queries, each inside the caller's transaction."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from server.store.errors import DuplicateId
from server.store.paging import keyset_after, order_keys
from server.store.records import ORDERS, Page, StoredFile
from server.store.schema import files

_META = [c for c in files.c if c.name != "content"]


def put(conn: Connection, file: StoredFile, content: bytes) -> StoredFile:
    stored = replace(file, size_bytes=len(content))
    try:
        conn.execute(insert(files).values(
            id=stored.id, owner=stored.owner, created_at=stored.created_at, filename=stored.filename,
            purpose=stored.purpose, size_bytes=stored.size_bytes, expires_at=stored.expires_at, content=content))
    except IntegrityError as e:
        raise DuplicateId(f"a file {stored.id!r} is stored already") from e
    return stored


def _record(row: Any) -> StoredFile:
    return StoredFile(id=row.id, owner=row.owner, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, size_bytes=row.size_bytes, expires_at=row.expires_at)


def _mine(file_id: str, owner: str) -> Any:
    return and_(files.c.id == file_id, files.c.owner == owner)


def get(conn: Connection, file_id: str, owner: str) -> StoredFile | None:
    row = conn.execute(select(*_META).where(_mine(file_id, owner))).one_or_none()
    return None if row is None else _record(row)


def content(conn: Connection, file_id: str, owner: str) -> bytes | None:
    data = conn.execute(select(files.c.content).where(_mine(file_id, owner))).scalar_one_or_none()
    return None if data is None else bytes(data)


def page(conn: Connection, owner: str, purpose: str | None, after: str | None, limit: int,
         order: str) -> Page[StoredFile]:
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: expected one of {ORDERS}")
    query = select(*_META).where(files.c.owner == owner)
    if purpose is not None:
        query = query.where(files.c.purpose == purpose)
    if after is not None:
        query = query.where(keyset_after(conn, files, owner, after, order))
    rows = conn.execute(query.order_by(*order_keys(files, order)).limit(limit + 1)).all()
    return Page([_record(row) for row in rows[:limit]], has_more=len(rows) > limit)


def delete_one(conn: Connection, file_id: str, owner: str) -> bool:
    return conn.execute(delete(files).where(_mine(file_id, owner))).rowcount == 1


def owner_bytes(conn: Connection, owner: str) -> int:
    return conn.execute(select(func.coalesce(func.sum(files.c.size_bytes), 0))
                        .where(files.c.owner == owner)).scalar_one()
