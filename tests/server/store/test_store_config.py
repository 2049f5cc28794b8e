"""--data-dir / --state-db and the lifespan: the store opens at start-up (the folder created, SQLite in
WAL mode), closes at shutdown, and a database that cannot be opened fails start-up with status 2."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.cli import build_parser, config_from_args
from server.config import DAY, MiB, ServerConfig, StoreConfig
from server.errors import NotReady
from server.lifecycle import Phase
from server.store.database import database_url
from testkit.postgres import free_port


def serve_args(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(["serve", "--model", "m", *argv]))


def test_the_default_folder_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert StoreConfig().url() == f"sqlite:///{tmp_path / 'llava-serve' / 'state.db'}"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert StoreConfig().folder() == tmp_path / "home" / ".local" / "share" / "llava-serve"
    assert StoreConfig(data_dir="~/state").folder() == tmp_path / "home" / "state"


def test_flags_set_the_store(monkeypatch, tmp_path):
    config = serve_args("--data-dir", str(tmp_path), "--response-retention-days", "0.5",
                        "--max-stored-response-mb", "64").store
    assert config == StoreConfig(data_dir=str(tmp_path), retention_seconds=DAY // 2,
                                 max_response_bytes_per_key=64 * MiB)
    monkeypatch.setenv("LLAVA_SERVE_STATE_DB", "postgresql://llava:pw@db.internal/llava")
    assert serve_args().store.url() == "postgresql://llava:pw@db.internal/llava"


@pytest.mark.parametrize(("url", "driver"), [
    ("postgresql://u:p@h/db", "postgresql+psycopg"),
    ("postgres://u:p@h:5433/db", "postgresql+psycopg"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
    ("sqlite:////var/lib/llava/state.db", "sqlite"),
])
def test_database_urls_open_through_psycopg_3(url, driver):
    assert database_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u:secret@h/db", "secret-but-no-scheme", "postgresql:secret"])
def test_a_state_db_that_is_no_database_url_is_refused_without_echoing_it(url):
    with pytest.raises(ValueError, match="state_db: expected postgresql://") as refused:
        StoreConfig(state_db=url)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_is_refused(url):
    with pytest.raises(ValueError, match="in-memory SQLite database keeps nothing"):
        StoreConfig(state_db=url)


@pytest.mark.parametrize(("changes", "message"), [
    ({"retention_seconds": 0}, "retention_seconds=0: must be >= 1"),
    ({"max_response_bytes_per_key": 0}, "max_response_bytes_per_key=0: must be >= 1"),
])
def test_bounds_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        StoreConfig(**changes)


def no_model():
    raise ValueError("this test loads no model")


def test_the_lifespan_opens_the_store_in_a_new_folder_and_closes_it(tmp_path):
    folder = tmp_path / "new" / "data"
    app = create_app(ServerConfig(model="m", served_model_name="m", media_workers=1,
                                  store=StoreConfig(data_dir=str(folder))), load=no_model)
    with pytest.raises(NotReady, match="state database is not open"):  # before start-up
        app.state.server.state_store()
    with TestClient(app):
        store = app.state.server.state_store()
        assert store is app.state.server.store and store.dialect == "sqlite"
        assert (folder / "state.db").is_file()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # key hashes and users' content
        with store.db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with pytest.raises(RuntimeError, match="shutdown"):  # closed with the app
        store._threads.submit(print)


def test_a_database_that_cannot_be_reached_fails_start_up_with_status_2(tmp_path):
    loaded = []
    config = StoreConfig(state_db=f"postgresql://llava:hunter2@127.0.0.1:{free_port()}/llava")
    app = create_app(ServerConfig(model="m", served_model_name="m", media_workers=1, store=config),
                     load=lambda: loaded.append(1))
    with TestClient(app):
        state = app.state.server
        assert state.lifecycle.phase is Phase.FAILED and state.lifecycle.exit_status == 2
        reason = state.lifecycle.failure
        assert reason.startswith("the state database could not be opened: StoreError: "
                                 "postgresql+psycopg://llava:***@127.0.0.1")
        assert "hunter2" not in reason
        assert state.store is None
        with pytest.raises(NotReady):
            state.state_store()
    assert loaded == []  # the model is not loaded for a server that cannot start
    assert not Path(tmp_path / "llava-serve").exists()
