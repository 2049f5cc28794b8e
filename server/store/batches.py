"""Batches and their lines, claimed by workers with leases: the queries, each in the caller's transaction.

A line is `pending` until a worker claims it: `running`, with `lease_owner` and `lease_expires`.
The worker then completes it (`succeeded` / `failed` with its result line) while it still holds
the lease; a worker that dies loses its leases when they expire, and the next claim takes those
lines again (`attempts` counts the claims). On PostgreSQL a claim selects with FOR UPDATE SKIP
LOCKED, so replicas claiming at once take different lines without waiting on each other; on
SQLite the claim's write transaction (BEGIN IMMEDIATE) is the only writer. Knows no HTTP.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from server.store.errors import DuplicateId
from server.store.paging import keyset_after, order_keys
from server.store.records import (
    LINE_DONE,
    LINE_STATUSES,
    Batch,
    BatchLine,
    ClaimedLine,
    LineResult,
    Page,
    dumps,
)
from server.store.schema import batch_lines, batches

CHANGEABLE = ("output_file_id", "error_file_id", "errors", "expires_at")  # set_status's `changes`
_CLEARED = {"lease_owner": None, "lease_expires": None}


def create(conn: Connection, batch: Batch, lines: Sequence[BatchLine]) -> Batch:
    repeated = [custom_id for custom_id, n in Counter(line.custom_id for line in lines).items() if n > 1]
    if repeated:
        raise DuplicateId(f"custom_id {repeated[0]!r} appears more than once in the batch")
    try:
        conn.execute(insert(batches).values(
            id=batch.id, owner=batch.owner, created_at=batch.created_at, endpoint=batch.endpoint,
            input_file_id=batch.input_file_id, completion_window=batch.completion_window, status=batch.status,
            metadata_json=_json_or_none(batch.metadata), errors_json=_json_or_none(batch.errors),
            output_file_id=batch.output_file_id, error_file_id=batch.error_file_id, expires_at=batch.expires_at,
            times_json=dumps(batch.times)))
    except IntegrityError as e:
        raise DuplicateId(f"a batch {batch.id!r} is stored already") from e
    if lines:
        conn.execute(insert(batch_lines), [
            {"batch_id": batch.id, "line_no": line.line_no, "custom_id": line.custom_id, "body_json": dumps(line.body),
             "status": "pending", "attempts": 0} for line in lines])
    return batch


def _json_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _record(row: Any) -> Batch:
    return Batch(
        id=row.id, owner=row.owner, created_at=row.created_at, endpoint=row.endpoint,
        input_file_id=row.input_file_id, completion_window=row.completion_window, status=row.status,
        metadata=None if row.metadata_json is None else json.loads(row.metadata_json),
        errors=None if row.errors_json is None else json.loads(row.errors_json),
        output_file_id=row.output_file_id, error_file_id=row.error_file_id, expires_at=row.expires_at,
        times=json.loads(row.times_json))


def get(conn: Connection, batch_id: str, owner: str) -> Batch | None:
    row = conn.execute(select(batches).where(and_(batches.c.id == batch_id, batches.c.owner == owner))).one_or_none()
    return None if row is None else _record(row)


def page(conn: Connection, owner: str, after: str | None, limit: int) -> Page[Batch]:
    query = select(batches).where(batches.c.owner == owner)
    if after is not None:
        query = query.where(keyset_after(conn, batches, owner, after, "desc"))
    rows = conn.execute(query.order_by(*order_keys(batches, "desc")).limit(limit + 1)).all()
    return Page([_record(row) for row in rows[:limit]], has_more=len(rows) > limit)


def count(conn: Connection, owner: str, statuses: list[str]) -> int:
    return conn.execute(select(func.count()).select_from(batches)
                        .where(batches.c.owner == owner, batches.c.status.in_(statuses))).scalar_one()


def in_statuses(conn: Connection, statuses: list[str]) -> list[Batch]:
    rows = conn.execute(select(batches).where(batches.c.status.in_(statuses)).order_by(*order_keys(batches, "asc")))
    return [_record(row) for row in rows]


def set_status(conn: Connection, batch_id: str, status: str, expected: list[str], changes: dict[str, Any],
               now: float) -> Batch | None:
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise ValueError(f"set_batch_status cannot change {sorted(unknown)}; only {CHANGEABLE}")
    row = conn.execute(select(batches).where(batches.c.id == batch_id).with_for_update()).one_or_none()
    if row is None or row.status not in expected:
        return None
    times = {**json.loads(row.times_json), f"{status}_at": now}
    values: dict[str, Any] = {"status": status, "times_json": dumps(times)}
    for name, value in changes.items():
        values["errors_json" if name == "errors" else name] = _json_or_none(value) if name == "errors" else value
    conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))
    return get(conn, batch_id, row.owner)


def count_lines(conn: Connection, batch_id: str) -> dict[str, int]:
    rows = conn.execute(select(batch_lines.c.status, func.count()).where(batch_lines.c.batch_id == batch_id)
                        .group_by(batch_lines.c.status)).all()
    counts = dict.fromkeys(LINE_STATUSES, 0)
    counts.update({status: count for status, count in rows})
    return counts


def claim(conn: Connection, worker: str, limit: int, lease_seconds: float, now: float,
          batch_id: str | None) -> list[ClaimedLine]:
    if limit < 1 or not lease_seconds > 0:
        raise ValueError(f"claim_lines: limit={limit} must be >= 1 and lease_seconds={lease_seconds} > 0")
    lines = batch_lines
    claimable = or_(lines.c.status == "pending", and_(lines.c.status == "running", lines.c.lease_expires < now))
    query = (select(lines.c.batch_id, lines.c.line_no, lines.c.custom_id, lines.c.body_json, lines.c.attempts)
             .join(batches, batches.c.id == lines.c.batch_id)
             .where(claimable, batches.c.status == "in_progress"))
    if batch_id is not None:
        query = query.where(lines.c.batch_id == batch_id)
    # PostgreSQL: rows another replica is claiming right now are skipped, not waited for; SQLite's
    # compiler leaves the clause out (its write transaction is the only one)
    query = (query.order_by(batches.c.created_at, lines.c.batch_id, lines.c.line_no).limit(limit)
             .with_for_update(skip_locked=True, of=lines))
    rows = conn.execute(query).all()
    if not rows:
        return []
    expires = now + lease_seconds
    conn.execute(update(lines).where(and_(lines.c.batch_id == bindparam("key_batch"),
                                          lines.c.line_no == bindparam("key_line")))
                 .values(status="running", lease_owner=worker, lease_expires=expires, attempts=lines.c.attempts + 1),
                 [{"key_batch": row.batch_id, "key_line": row.line_no} for row in rows])
    return [ClaimedLine(row.batch_id, row.line_no, row.custom_id, json.loads(row.body_json), row.attempts + 1, expires)
            for row in rows]


def _held_by(worker: str) -> Any:
    return and_(batch_lines.c.status == "running", batch_lines.c.lease_owner == worker)


def extend(conn: Connection, worker: str, lease_seconds: float, now: float) -> int:
    return conn.execute(update(batch_lines).where(_held_by(worker)).values(lease_expires=now + lease_seconds)).rowcount


def complete(conn: Connection, batch_id: str, line_no: int, worker: str, status: str, result: dict[str, Any],
             now: float) -> bool:
    if status not in LINE_DONE:
        raise ValueError(f"status={status!r}: a finished line is one of {LINE_DONE}")
    found = conn.execute(update(batch_lines).where(
        and_(batch_lines.c.batch_id == batch_id, batch_lines.c.line_no == line_no, _held_by(worker)))
        .values(status=status, result_json=dumps(result), completed_at=now, **_CLEARED))
    return found.rowcount == 1


def release(conn: Connection, worker: str) -> int:
    return conn.execute(update(batch_lines).where(_held_by(worker)).values(status="pending", **_CLEARED)).rowcount


def release_one(conn: Connection, batch_id: str, line_no: int, worker: str) -> bool:
    line = and_(batch_lines.c.batch_id == batch_id, batch_lines.c.line_no == line_no, _held_by(worker))
    return conn.execute(update(batch_lines).where(line).values(status="pending", **_CLEARED)).rowcount == 1


def status_counts(conn: Connection) -> tuple[dict[str, int], dict[str, int]]:
    """Every batch by status, and every line by status (of every batch)."""
    batch_rows = conn.execute(select(batches.c.status, func.count()).group_by(batches.c.status)).all()
    line_rows = conn.execute(select(batch_lines.c.status, func.count()).group_by(batch_lines.c.status)).all()
    lines = dict.fromkeys(LINE_STATUSES, 0)
    lines.update({status: count for status, count in line_rows})
    return {status: count for status, count in batch_rows}, lines


def expire_leases(conn: Connection, now: float) -> int:
    lapsed = and_(batch_lines.c.status == "running", batch_lines.c.lease_expires < now)
    return conn.execute(update(batch_lines).where(lapsed).values(status="pending", **_CLEARED)).rowcount


def cancel_pending(conn: Connection, batch_id: str) -> int:
    pending = and_(batch_lines.c.batch_id == batch_id, batch_lines.c.status == "pending")
    return conn.execute(update(batch_lines).where(pending).values(status="cancelled")).rowcount


def results(conn: Connection, batch_id: str, status: str) -> list[LineResult]:
    rows = conn.execute(select(batch_lines.c.line_no, batch_lines.c.custom_id, batch_lines.c.result_json)
                        .where(and_(batch_lines.c.batch_id == batch_id, batch_lines.c.status == status))
                        .order_by(batch_lines.c.line_no))
    return [LineResult(row.line_no, row.custom_id, status, json.loads(row.result_json)) for row in rows]
