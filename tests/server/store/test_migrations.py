"""Schema migrations on SQLite and PostgreSQL: once, in order, in one transaction, one migrator at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Connection, insert, inspect, select, text

from server.config import StoreConfig
from server.store import SchemaTooNew, StateStore
from server.store import schema as tables
from server.store.database import Database
from server.store.migrations import MIGRATIONS, Migration, current_version, migrate
from tests.server.store.conftest import run

NUM_MIGRATORS = 4


def test_migrating_twice_applies_nothing_the_second_time(database_url):
    db = Database(database_url)
    try:
        assert migrate(db) == [m.version for m in MIGRATIONS]
        assert migrate(db) == []
        with db.read() as conn:
            rows = conn.execute(select(tables.schema_version.c.version)).scalars().all()
        assert rows == [m.version for m in MIGRATIONS]
    finally:
        db.close()


def test_the_migrated_schema_is_the_one_the_queries_use(database_url):
    db = Database(database_url)
    try:
        migrate(db)
        with db.read() as conn:
            found = inspect(conn)
            assert set(found.get_table_names()) == set(tables.metadata.tables)
            for table in tables.metadata.sorted_tables:
                assert [c["name"] for c in found.get_columns(table.name)] == [c.name for c in table.columns]
                assert {i["name"] for i in found.get_indexes(table.name)} == {i.name for i in table.indexes}
    finally:
        db.close()


def test_replicas_starting_at_once_migrate_once(database_url):
    applied, lock = [], threading.Lock()

    def slow_create(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE probe (n INTEGER)"))  # a second run would fail: the table exists
        time.sleep(0.3)  # hold the migration open while the other replicas arrive
        with lock:
            applied.append(threading.get_ident())

    migrations = (Migration(1, "probe", slow_create),)
    dbs = [Database(database_url) for _ in range(NUM_MIGRATORS)]
    try:
        with ThreadPoolExecutor(NUM_MIGRATORS) as pool:
            results = list(pool.map(lambda db: migrate(db, migrations), dbs))
        assert sorted(results) == [[]] * (NUM_MIGRATORS - 1) + [[1]]
        assert len(applied) == 1
    finally:
        for db in dbs:
            db.close()


def test_stores_opening_at_once_all_come_up_on_one_schema(database_url):
    def open_and_close(_: int) -> str:
        store = run(StateStore.open(StoreConfig(state_db=database_url)))
        run(store.close())
        return store.dialect

    with ThreadPoolExecutor(NUM_MIGRATORS) as pool:
        assert len(list(pool.map(open_and_close, range(NUM_MIGRATORS)))) == NUM_MIGRATORS
    db = Database(database_url)
    try:
        with db.read() as conn:
            assert current_version(conn) == MIGRATIONS[-1].version
            assert len(conn.execute(select(tables.schema_version)).all()) == len(MIGRATIONS)
    finally:
        db.close()


def test_a_failing_migration_leaves_the_schema_as_it_was(database_url):
    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half (n INTEGER)"))
        raise RuntimeError("the migration broke")

    db = Database(database_url)
    try:
        migrate(db)
        with pytest.raises(RuntimeError, match="broke"):
            migrate(db, (*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, "broken", half_done)))
        with db.read() as conn:
            assert current_version(conn) == MIGRATIONS[-1].version
            assert "half" not in inspect(conn).get_table_names()
    finally:
        db.close()


def test_a_database_newer_than_this_code_is_refused(database_url):
    db = Database(database_url)
    try:
        migrate(db)
        with db.write() as conn:
            conn.execute(insert(tables.schema_version).values(version=99, description="from the future",
                                                              applied_at=0.0))
    finally:
        db.close()
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        run(StateStore.open(StoreConfig(state_db=database_url)))
