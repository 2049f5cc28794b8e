"""Stored responses and the media of their turns: the queries, each inside the caller's transaction.

A response's media is kept once per content hash (`media`), with `refs` counting the responses
that name it; deleting a response (by a client, by age, or to keep its owner under the byte cap)
takes its references away and deletes the blobs no response names any more. Rows older than
`oldest` are treated as gone before the sweep reaches them. Knows no HTTP.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from server.store.errors import DuplicateId, StoredBytesExceeded, UnknownCursor
from server.store.records import ORDERS, MediaBlob, Page, StoredResponse, dumps
from server.store.schema import media, response_items, response_media, responses

EXPIRE_CHUNK = 500  # responses deleted per transaction by the age sweep


def put(conn: Connection, dialect: str, response: StoredResponse, blobs: Sequence[MediaBlob],
        max_owner_bytes: int) -> StoredResponse:
    """Insert the response with its items and media, then delete the owner's oldest beyond the cap."""
    items = [dumps(item) for item in response.input_items]
    ids = [item.get("id") for item in response.input_items]
    if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("every input item needs a unique string `id`")
    unique = {blob.hash: blob for blob in blobs}
    if response.media_hashes and set(response.media_hashes) != set(unique):
        raise ValueError("media_hashes are the store's to fill in: pass the blobs themselves")
    request_json, output_json = dumps(response.request), dumps(response.output)
    size = (sum(len(text.encode()) for text in (request_json, output_json, *items))
            + sum(len(blob.data) for blob in unique.values()))
    if size > max_owner_bytes:
        raise StoredBytesExceeded(f"the response takes {size} bytes, more than the {max_owner_bytes} bytes "
                                  "a key may store")
    stored = replace(response, media_hashes=tuple(unique), size_bytes=size)
    try:
        conn.execute(insert(responses).values(
            id=stored.id, owner=stored.owner, created_at=stored.created_at, model=stored.model,
            status=stored.status, previous_response_id=stored.previous_response_id, request_json=request_json,
            output_json=output_json, size_bytes=size))
    except IntegrityError as e:
        raise DuplicateId(f"a response {stored.id!r} is stored already") from e
    if items:
        conn.execute(insert(response_items), [
            {"response_id": stored.id, "position": n, "item_id": i, "item_json": text}
            for n, (i, text) in enumerate(zip(ids, items, strict=True))])
    for digest in sorted(unique):  # one order for every writer: two never wait on each other's rows
        _add_reference(conn, dialect, unique[digest])
    if unique:
        conn.execute(insert(response_media), [
            {"response_id": stored.id, "hash": digest, "position": n} for n, digest in enumerate(unique)])
    _evict_beyond_cap(conn, stored.owner, stored.id, max_owner_bytes)
    return stored


def _add_reference(conn: Connection, dialect: str, blob: MediaBlob) -> None:
    # a blob stored already (the next turn resends the same image) costs a counter, not its bytes again
    if conn.execute(update(media).where(media.c.hash == blob.hash).values(refs=media.c.refs + 1)).rowcount:
        return
    make_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = make_insert(media).values(hash=blob.hash, mime_type=blob.mime_type, data=blob.data,
                                          size_bytes=len(blob.data), refs=1)
    conn.execute(statement.on_conflict_do_update(index_elements=[media.c.hash], set_={"refs": media.c.refs + 1}))


def _evict_beyond_cap(conn: Connection, owner: str, keep: str, max_owner_bytes: int) -> None:
    rows = conn.execute(select(responses.c.id, responses.c.size_bytes).where(responses.c.owner == owner)
                        .order_by(responses.c.created_at, responses.c.id)).all()
    excess = sum(size for _, size in rows) - max_owner_bytes
    victims = []
    for response_id, size in rows:
        if excess <= 0:
            break
        if response_id != keep:
            victims.append(response_id)
            excess -= size
    delete_ids(conn, victims)


def delete_ids(conn: Connection, ids: Sequence[str]) -> int:
    """Delete these responses, their items and their media references; blobs left unnamed go too."""
    if not ids:
        return 0
    # NOTE: the references this transaction itself deleted (RETURNING), not those it saw before: two
    # transactions deleting one response at once (a client's DELETE and an eviction) decrement once
    refs = Counter(conn.execute(delete(response_media).where(response_media.c.response_id.in_(ids))
                                .returning(response_media.c.hash)).scalars())
    conn.execute(delete(response_items).where(response_items.c.response_id.in_(ids)))
    count = conn.execute(delete(responses).where(responses.c.id.in_(ids))).rowcount
    for digest in sorted(refs):
        conn.execute(update(media).where(media.c.hash == digest).values(refs=media.c.refs - refs[digest]))
    if refs:
        conn.execute(delete(media).where(and_(media.c.hash.in_(sorted(refs)), media.c.refs <= 0)))
    return count


def _visible(response_id: str, owner: str, oldest: float) -> Any:
    return and_(responses.c.id == response_id, responses.c.owner == owner, responses.c.created_at >= oldest)


def _records(conn: Connection, ids: list[str]) -> dict[str, StoredResponse]:
    """These responses with their items and media, by id (three queries however many)."""
    items: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(select(response_items.c.response_id, response_items.c.item_json)
                            .where(response_items.c.response_id.in_(ids)).order_by(response_items.c.position)):
        items[row.response_id].append(json.loads(row.item_json))
    hashes: dict[str, list[str]] = defaultdict(list)
    for row in conn.execute(select(response_media.c.response_id, response_media.c.hash)
                            .where(response_media.c.response_id.in_(ids)).order_by(response_media.c.position)):
        hashes[row.response_id].append(row.hash)
    return {row.id: StoredResponse(
        id=row.id, owner=row.owner, created_at=row.created_at, model=row.model, status=row.status,
        request=json.loads(row.request_json), input_items=items[row.id], output=json.loads(row.output_json),
        previous_response_id=row.previous_response_id, media_hashes=tuple(hashes[row.id]), size_bytes=row.size_bytes)
        for row in conn.execute(select(responses).where(responses.c.id.in_(ids)))}


def get(conn: Connection, response_id: str, owner: str, oldest: float) -> StoredResponse | None:
    if conn.execute(select(responses.c.id).where(_visible(response_id, owner, oldest))).one_or_none() is None:
        return None
    return _records(conn, [response_id])[response_id]


def conversation(conn: Connection, response_id: str, owner: str, oldest: float,
                 max_turns: int) -> list[StoredResponse] | None:
    """The turns that end with this response, oldest first; None when any of them is gone.

    One recursive query walks previous_response_id back through this owner's visible responses.
    """
    first = select(responses.c.id, responses.c.previous_response_id, literal(1).label("depth")).where(
        _visible(response_id, owner, oldest))
    chain = first.cte("chain", recursive=True)
    earlier = (select(responses.c.id, responses.c.previous_response_id, chain.c.depth + 1)
               .join(chain, responses.c.id == chain.c.previous_response_id)
               .where(responses.c.owner == owner, responses.c.created_at >= oldest, chain.c.depth <= max_turns))
    chain = chain.union_all(earlier)
    links = conn.execute(select(chain.c.id, chain.c.previous_response_id, chain.c.depth).order_by(chain.c.depth)).all()
    if len(links) > max_turns:  # the walk stops one turn past the limit
        raise ValueError(f"the conversation is longer than {max_turns} turns")
    if not links or links[-1].previous_response_id is not None:  # gone, or an earlier turn is
        return None
    found = _records(conn, [link.id for link in links])
    return [found[link.id] for link in reversed(links)]


def input_items(conn: Connection, response_id: str, owner: str, oldest: float, after: str | None,
                limit: int, order: str) -> Page[dict[str, Any]] | None:
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: expected one of {ORDERS}")
    if conn.execute(select(responses.c.id).where(_visible(response_id, owner, oldest))).one_or_none() is None:
        return None
    position = response_items.c.position
    query = select(response_items.c.item_json).where(response_items.c.response_id == response_id)
    if after is not None:
        start = conn.execute(select(position).where(and_(response_items.c.response_id == response_id,
                                                         response_items.c.item_id == after))).scalar_one_or_none()
        if start is None:
            raise UnknownCursor(f"after={after!r}: no input item of this response has that id")
        query = query.where(position > start if order == "asc" else position < start)
    rows = conn.execute(query.order_by(position if order == "asc" else position.desc()).limit(limit + 1)).scalars()
    found = [json.loads(text) for text in rows]
    return Page(found[:limit], has_more=len(found) > limit)


def delete_one(conn: Connection, response_id: str, owner: str, oldest: float) -> bool:
    found = conn.execute(select(responses.c.id).where(_visible(response_id, owner, oldest))).one_or_none()
    return found is not None and delete_ids(conn, [response_id]) == 1


def media_of(conn: Connection, hashes: Iterable[str], owner: str, oldest: float) -> dict[str, MediaBlob]:
    """The blobs among `hashes` that some response of this owner names."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    named = (select(response_media.c.hash).join(responses, responses.c.id == response_media.c.response_id)
             .where(and_(responses.c.owner == owner, responses.c.created_at >= oldest,
                         response_media.c.hash.in_(wanted))))
    rows = conn.execute(select(media.c.hash, media.c.mime_type, media.c.data).where(media.c.hash.in_(named))).all()
    return {row.hash: MediaBlob(bytes(row.data), row.mime_type) for row in rows}


def expired_ids(conn: Connection, before: float) -> list[str]:
    return list(conn.execute(select(responses.c.id).where(responses.c.created_at < before)
                             .order_by(responses.c.created_at).limit(EXPIRE_CHUNK)).scalars())


def owner_bytes(conn: Connection, owner: str) -> int:
    return conn.execute(select(func.coalesce(func.sum(responses.c.size_bytes), 0))
                        .where(responses.c.owner == owner)).scalar_one()
