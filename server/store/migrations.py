"""Schema versions: ordered migration functions and the one transaction that applies them.

`schema_version` holds a row per applied migration; `migrate` applies those above the newest row,
in order, in a single write transaction, so a migration that fails leaves the old schema as it
was. Two replicas starting at once do not both migrate: on PostgreSQL the transaction first takes
an advisory lock (pg_advisory_xact_lock, released at commit), on SQLite its BEGIN IMMEDIATE is the
one writer's lock; the second then finds the work done. A database newer than this code is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, text

from server.store import schema
from server.store.database import Database
from server.store.errors import SchemaTooNew

# pg_advisory_xact_lock's key: any constant the other users of the database do not pick
_MIGRATION_LOCK = 0x6C6C617661  # "llava"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    # NOTE: version 1 is schema.py as first written; a later migration alters these tables with
    # its own DDL, and then this function must keep creating the version-1 tables (a frozen copy).
    schema.metadata.create_all(conn, tables=[t for t in schema.metadata.sorted_tables
                                             if t is not schema.schema_version])


MIGRATIONS = (
    Migration(1, "responses, their input items and media; files; batches and their lines", _create_v1),
)


def current_version(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(schema.schema_version.c.version), 0))).scalar_one()


def migrate(db: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Bring the schema to the newest version; the versions applied now (none when it was up to date)."""
    latest = migrations[-1].version
    with db.write() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        schema.schema_version.create(conn, checkfirst=True)
        version = current_version(conn)
        if version > latest:
            raise SchemaTooNew(f"the state database is at schema version {version}, this llava-serve knows "
                               f"up to {latest}: upgrade it (another replica runs a newer release)")
        applied = []
        for migration in migrations:
            if migration.version > version:
                migration.apply(conn)
                conn.execute(insert(schema.schema_version).values(
                    version=migration.version, description=migration.description, applied_at=time.time()))
                applied.append(migration.version)
        return applied
