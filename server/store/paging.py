"""Keyset paging over an owner's rows in (created_at, id) order: `after` is the id of the last row seen."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, and_, or_, select

from server.store.errors import UnknownCursor


def keyset_after(conn: Connection, table: Table, owner: str, after: str, order: str) -> Any:
    """The condition for rows after `after` in (created_at, id) order: ids break ties of equal times."""
    start = conn.execute(select(table.c.created_at).where(and_(table.c.id == after, table.c.owner == owner))
                         ).scalar_one_or_none()
    if start is None:
        raise UnknownCursor(f"after={after!r}: no such id in this list")
    created, key = table.c.created_at, table.c.id
    if order == "asc":
        return or_(created > start, and_(created == start, key > after))
    return or_(created < start, and_(created == start, key < after))


def order_keys(table: Table, order: str) -> tuple[Any, ...]:
    created, key = table.c.created_at, table.c.id
    return (created, key) if order == "asc" else (created.desc(), key.desc())
