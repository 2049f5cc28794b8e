"""The state store's tests run twice: on a SQLite file and on a real PostgreSQL server.

`postgres` is one server per test session (per xdist worker), stopped at the end; `database_url`
is a fresh SQLite file or a fresh PostgreSQL database per test; `open_store` opens the real
StateStore on it with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from server.config import StoreConfig
from server.store import StateStore
from testkit.postgres import PostgresServer

T = TypeVar("T")
DIALECTS = ("sqlite", "postgresql")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await one store call from a plain test (the store's threads outlive each event loop)."""
    return asyncio.run(coroutine)


class Clock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=DIALECTS)
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(database_url, clock) -> Iterator[Callable[..., StateStore]]:
    """Open a StateStore on this test's database (`StoreConfig` fields as keywords); all closed at the end."""
    opened: list[StateStore] = []

    def opener(**config: Any) -> StateStore:
        store = run(StateStore.open(StoreConfig(state_db=database_url, **config), clock))
        opened.append(store)
        return store

    yield opener
    for store in opened:
        run(store.close())


@pytest.fixture
def store(open_store) -> StateStore:
    return open_store()
