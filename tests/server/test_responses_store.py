"""Stored responses through the real app and a real SQLite state database: owned by the key that made
them (another key gets 404 on every route), kept across a restart, `store: false` leaves nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig, StoreConfig
from tests.conftest import png_data_url, random_image, wait_until_ready

URL = png_data_url(random_image(40, 30, seed=8))


def app_client(tiny_model, data_dir) -> TestClient:
    config = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, api_keys=("k1", "k2"),
                          store=StoreConfig(data_dir=str(data_dir)))
    return TestClient(create_app(config, loaded=tiny_model))


def create(c: TestClient, key: str, **kw) -> dict:
    r = c.post("/v1/responses", headers={"Authorization": f"Bearer {key}"},
               json={"model": "tiny", "input": "hello", "max_output_tokens": 2, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_stored_response_is_its_keys_alone_and_outlives_a_restart(tiny_model, tmp_path):
    mine, theirs = {"Authorization": "Bearer k1"}, {"x-api-key": "k2"}
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        first = create(c, "k1")
        assert c.get(f"/v1/responses/{first['id']}", headers=mine).json()["output"] == first["output"]
        for method, path in (("GET", ""), ("GET", "/input_items"), ("DELETE", "")):
            r = c.request(method, f"/v1/responses/{first['id']}{path}", headers=theirs)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
        r = c.post("/v1/responses", headers=theirs, json={"model": "tiny", "input": "x", "max_output_tokens": 1,
                                                          "previous_response_id": first["id"]})
        assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
        image = [{"role": "user", "content": [{"type": "input_image", "image_url": URL},
                                              {"type": "input_text", "text": "?"}]}]
        pictured = create(c, "k1", input=image)
        listed = c.get(f"/v1/responses/{pictured['id']}/input_items", headers=mine).json()["data"]
        assert listed[0]["content"][0]["image_url"] == URL  # kept by content, given back as sent
        follow = create(c, "k1", input="and?", previous_response_id=pictured["id"])
        assert follow["usage"]["input_tokens_details"]["image_tokens"] == pictured["usage"]["input_tokens_details"][
            "image_tokens"] > 0
        assert follow["usage"]["input_tokens_details"]["cached_tokens"] > 0
        unstored = create(c, "k1", store=False)
        assert c.get(f"/v1/responses/{unstored['id']}", headers=mine).status_code == 404
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        again = c.get(f"/v1/responses/{first['id']}", headers=mine)
        assert again.status_code == 200 and again.json()["output"] == first["output"]
        items = c.get(f"/v1/responses/{first['id']}/input_items", headers=mine).json()
        assert items["object"] == "list" and [i["content"] for i in items["data"]] == ["hello"]
        second = create(c, "k1", previous_response_id=first["id"])
        assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
        assert c.delete(f"/v1/responses/{first['id']}", headers=mine).json()["deleted"] is True
        assert c.get(f"/v1/responses/{first['id']}", headers=mine).status_code == 404
        bad = c.get(f"/v1/responses/{second['id']}/input_items?limit=0", headers=mine)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
