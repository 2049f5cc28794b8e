"""Files and batches through the real app, engine and batch runner on a real SQLite state database: a batch's
answers equal the direct requests' (greedy) on each endpoint, a refused line lands in the error file with its
400 body, every validation error names its line, another key sees 404, the per-key limits answer 429 / 413."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from server.app import create_app
from server.batch.lines import parse_input
from server.config import BatchConfig, ServerConfig, StoreConfig
from tests.conftest import wait_until_ready

MINE, THEIRS = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "describe a cat"}], "max_tokens": 6,
        "temperature": 0}


def app_client(tiny_model, data_dir, **batch) -> TestClient:
    config = ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, api_keys=("k1", "k2"),
                          store=StoreConfig(data_dir=str(data_dir)), batch=BatchConfig(**batch))
    return TestClient(create_app(config, loaded=tiny_model))


def jsonl(items: list[dict]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def upload(c: TestClient, content: bytes, headers=MINE) -> dict:
    r = c.post("/v1/files", headers=headers, files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert r.status_code == 200, r.text
    return r.json()


def line(custom_id: str, body: dict, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def finished(c: TestClient, batch_id: str, headers=MINE) -> dict:
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing bound
    while time.monotonic() < deadline:
        batch = c.get(f"/v1/batches/{batch_id}", headers=headers).json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def lines_of(c: TestClient, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    text = c.get(f"/v1/files/{file_id}/content", headers=MINE).text
    return {item["custom_id"]: item for item in map(json.loads, text.splitlines())}


def run_batch(c: TestClient, endpoint: str, items: list[dict]) -> tuple[dict, dict[str, dict], dict[str, dict]]:
    file = upload(c, jsonl(items))
    r = c.post("/v1/batches", headers=MINE, json={"input_file_id": file["id"], "endpoint": endpoint,
                                                  "completion_window": "24h", "metadata": {"job": "t"}})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "validating" and r.json()["request_counts"]["total"] == len(items)
    batch = finished(c, r.json()["id"])
    return batch, lines_of(c, batch["output_file_id"]), lines_of(c, batch["error_file_id"])


def without_ids(answer: dict) -> dict:
    """The answer less its id, times and prefix-cache hits (the second of two equal prompts finds the first's)."""
    usage = {**answer["usage"], "prompt_tokens_details": {**answer["usage"]["prompt_tokens_details"],
                                                          "cached_tokens": None}}
    return {k: v for k, v in answer.items() if k not in ("id", "created", "media")} | {"usage": usage}


def test_each_line_answers_as_the_direct_request_and_a_refused_line_has_its_400(tiny_model, tmp_path):
    image = {"type": "image_url", "image_url": {"url": _png_data_url()}}
    with_image = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, image]}]}
    bad = {**CHAT, "temperature": -3}
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        batch, out, err = run_batch(c, "/v1/chat/completions",
                                    [line("a", CHAT), line("b", bad), line("c", with_image)])
        assert batch["status"] == "completed" and batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        assert batch["metadata"] == {"job": "t"} and batch["completed_at"] >= batch["in_progress_at"]
        for custom_id, body in (("a", CHAT), ("c", with_image)):
            direct = c.post("/v1/chat/completions", headers=MINE, json=body).json()
            response = out[custom_id]["response"]
            assert response["status_code"] == 200 and out[custom_id]["error"] is None
            assert without_ids(response["body"]) == without_ids(direct)
        direct_bad = c.post("/v1/chat/completions", headers=MINE, json=bad)
        assert err["b"]["response"]["status_code"] == direct_bad.status_code == 400
        assert err["b"]["response"]["body"] == direct_bad.json()
        assert set(out) | set(err) == {"a", "b", "c"} and not set(out) & set(err)
        output_file = c.get(f"/v1/files/{batch['output_file_id']}", headers=MINE).json()
        assert output_file["purpose"] == "batch_output"
        metrics = c.get("/metrics", headers=MINE).text
        assert 'llava_batch_lines_done_total{status="succeeded"} 2.0' in metrics
        assert 'llava_batch_lines_done_total{status="failed"} 1.0' in metrics
        for series in ('llava_batches{status="completed"}', 'llava_batch_lines{status="pending"}',
                       "llava_batch_lines_waiting", 'llava_http_responses_total{endpoint="batches",status="200"}'):
            assert series in metrics, series


def test_responses_and_completions_lines_answer_as_their_routes(tiny_model, tmp_path):
    responses = {"model": "tiny", "input": "hello there", "max_output_tokens": 5, "temperature": 0}
    completion = {"model": "tiny", "prompt": ["one two", "three"], "max_tokens": 4, "temperature": 0}
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        _, out, _ = run_batch(c, "/v1/responses", [line("r", responses, "/v1/responses")])
        direct = c.post("/v1/responses", headers=MINE, json={**responses, "store": False}).json()
        body = out["r"]["response"]["body"]
        assert body["output"][0]["content"][0]["text"] == direct["output"][0]["content"][0]["text"]
        assert body["usage"]["output_tokens"] == direct["usage"]["output_tokens"]
        _, out, _ = run_batch(c, "/v1/completions", [line("p", completion, "/v1/completions")])
        direct = c.post("/v1/completions", headers=MINE, json=completion).json()
        body = out["p"]["response"]["body"]
        assert [ch["text"] for ch in body["choices"]] == [ch["text"] for ch in direct["choices"]]
        assert body["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]


def test_a_file_that_fails_validation_gives_a_failed_batch_with_each_line(tiny_model, tmp_path):
    content = b"\n".join([
        json.dumps(line("a", CHAT)).encode(),
        b"{not json",
        json.dumps(line("a", CHAT)).encode(),
        json.dumps(line("b", CHAT, "/v1/embeddings")).encode(),
        json.dumps(line("c", {**CHAT, "model": "gpt-4o"})).encode(),
    ])
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        file = upload(c, content)
        r = c.post("/v1/batches", headers=MINE, json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"})
        batch = r.json()
        assert batch["status"] == "failed" and batch["failed_at"] is not None
        errors = [(e["line"], e["code"]) for e in batch["errors"]["data"]]
        assert errors == [(2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_endpoint"),
                          (5, "model_not_found")]
        assert batch["request_counts"]["total"] == 0


def test_files_and_batches_are_their_keys_alone(tiny_model, tmp_path):
    with app_client(tiny_model, tmp_path) as c:
        wait_until_ready(c)
        file = upload(c, jsonl([line("a", CHAT)]))
        assert c.get(f"/v1/files/{file['id']}", headers=MINE).json()["bytes"] == file["bytes"]
        for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
            assert c.request(method, f"/v1/files/{file['id']}{path}", headers=THEIRS).status_code == 404
        assert c.get("/v1/files", headers=THEIRS).json()["data"] == []
        r = c.post("/v1/batches", headers=THEIRS, json={"input_file_id": file["id"],
                                                        "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"
        batch = c.post("/v1/batches", headers=MINE, json={"input_file_id": file["id"],
                                                          "endpoint": "/v1/chat/completions",
                                                          "completion_window": "24h"}).json()
        assert c.get(f"/v1/batches/{batch['id']}", headers=THEIRS).status_code == 404
        assert c.post(f"/v1/batches/{batch['id']}/cancel", headers=THEIRS).status_code == 404
        assert c.get("/v1/batches", headers=THEIRS).json()["data"] == []
        assert [b["id"] for b in c.get("/v1/batches", headers=MINE).json()["data"]] == [batch["id"]]
        finished(c, batch["id"])
        assert c.delete(f"/v1/files/{file['id']}", headers=MINE).json()["deleted"] is True
        assert c.get(f"/v1/files/{file['id']}", headers=MINE).status_code == 404


def test_bad_requests_and_the_per_key_limits(tiny_model, tmp_path):
    with app_client(tiny_model, tmp_path, max_file_bytes=2048, max_file_bytes_per_key=3000,
                    max_active_batches_per_key=1) as c:
        wait_until_ready(c)
        r = c.post("/v1/files", headers=MINE, files={"file": ("x.jsonl", b"x" * 2049)}, data={"purpose": "batch"})
        assert r.status_code == 413 and "--max-file-mb" in r.json()["error"]["message"]
        r = c.post("/v1/files", headers=MINE, files={"file": ("x.jsonl", b"x")}, data={"purpose": "fine-tune"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        long = {**CHAT, "max_tokens": 64}
        file = upload(c, jsonl([line(str(i), long) for i in range(6)]))
        r = c.post("/v1/files", headers=MINE, files={"file": ("y.jsonl", b"y" * 2000)}, data={"purpose": "batch"})
        assert r.status_code == 413 and "--max-stored-file-mb" in r.json()["error"]["message"]
        body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        for bad, param in (({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"},
                                                                         "completion_window")):
            r = c.post("/v1/batches", headers=MINE, json={**body, **bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == param
        first = c.post("/v1/batches", headers=MINE, json=body).json()
        r = c.post("/v1/batches", headers=MINE, json=body)
        assert r.status_code == 429 and "--max-active-batches" in r.json()["error"]["message"]
        cancelled = c.post(f"/v1/batches/{first['id']}/cancel", headers=MINE).json()
        assert cancelled["status"] in ("cancelling", "cancelled")
        done = finished(c, first["id"])
        assert done["status"] == "cancelled" and done["cancelled_at"] is not None
        assert c.post(f"/v1/batches/{first['id']}/cancel", headers=MINE).json()["status"] == "cancelled"


def test_the_input_checks_alone():
    ok = jsonl([line("a", CHAT), line("b", CHAT)])
    parsed = parse_input(ok, "/v1/chat/completions", "tiny")
    assert [x.custom_id for x in parsed.lines] == ["a", "b"] and not parsed.errors
    assert parse_input(b"", "/v1/chat/completions", "tiny").errors[0]["code"] == "empty_file"
    assert parse_input(b"\xff", "/v1/chat/completions", "tiny").errors[0]["code"] == "invalid_file"
    wrong = jsonl([{**line("a", CHAT), "method": "GET"}, {"custom_id": "b", "method": "POST",
                                                          "url": "/v1/chat/completions", "body": []}])
    assert [(e["line"], e["code"]) for e in parse_input(wrong, "/v1/chat/completions", "tiny").errors] == [
        (1, "invalid_method"), (2, "invalid_body")]


def _png_data_url() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
