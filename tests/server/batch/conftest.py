"""The state store's fixtures (a SQLite file and a real PostgreSQL database per test, a clock the test moves)."""

from tests.server.store.conftest import clock, database_url, open_store, postgres, store

__all__ = ["clock", "database_url", "open_store", "postgres", "store"]
