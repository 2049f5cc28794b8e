"""One SQLAlchemy engine over the state database, and its read and write transactions.

SQLite (the default): the file is opened in WAL mode (readers never wait for the writer) with
synchronous=FULL (a committed transaction survives a power cut, not only a killed process), a busy
timeout, and foreign keys on; a write transaction starts with BEGIN IMMEDIATE, so it holds the one
writer's lock from its first statement and two writers never deadlock upgrading a read lock.
PostgreSQL (`--state-db postgresql://...`): psycopg 3, READ COMMITTED, connections checked
before use (a restarted database server costs no failed request). Knows no table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

BUSY_TIMEOUT_S = 30.0  # SQLite: how long a writer waits for another's lock before failing
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a database server that does not answer fails start-up, not hangs it
POOL_SIZE = 8  # connections (and store threads): enough for the routes and a batch runner at once
_IS_WRITE = "llava_is_write"  # the execution option that marks a write transaction


def database_url(text: str) -> URL:
    """The URL SQLAlchemy opens: `postgresql://` and `postgres://` go through psycopg 3."""
    url = make_url(text.replace("postgres://", "postgresql://", 1) if text.startswith("postgres://") else text)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


class Database:
    """The engine and its dialect (`sqlite` or `postgresql`)."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine = _sqlite_engine(self.url) if self.dialect == "sqlite" else _postgres_engine(self.url)

    @property
    def shown_url(self) -> str:
        """The URL for a log line: the password hidden."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction that only reads (commits at the end; rolls back on an error)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that writes: on SQLite it holds the writer's lock from the start."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_IS_WRITE: True})
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=0,
                           connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # NOTE: pysqlite's own transaction handling issues BEGIN late and never IMMEDIATE; with it
        # off, `begin` below says how each transaction starts (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={int(BUSY_TIMEOUT_S * 1000)}",
                       "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IS_WRITE) else "BEGIN")

    return engine


def _postgres_engine(url: URL) -> Engine:
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
