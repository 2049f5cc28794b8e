"""The app client the server tests share: the real app and engine worker on the tiny model, in-process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from tests.conftest import wait_until_ready


@pytest.fixture(scope="module")
def client(tiny_model):
    """One app per test module, ready (the model is handed over in the background; /ready says when)."""
    app = create_app(ServerConfig(model="tiny", served_model_name="tiny", media_workers=1), loaded=tiny_model)
    with TestClient(app) as c:
        wait_until_ready(c)
        yield c
