"""The Batch API through the official `openai` client on real server processes sharing one SQLite data folder:
files.create, batches.create, retrieve, list, cancel, files.content; another key's 404; an interactive chat
answered while batch lines hold every engine row, before any of them finishes; a batch that outlives a SIGKILL
and a SIGTERM (each custom_id exactly once in its output)."""

from __future__ import annotations

import io
import json
import signal
import time

import openai
import pytest

from tests.e2e.conftest import start_server, stop_server

KEYS = ("k1", "k2")
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "tell me about cats"}], "max_tokens": 8,
        "temperature": 0}
LONG = {**CHAT, "max_tokens": 120, "ignore_eos": True}
NUM_LONG = 10


def server_args(data_dir) -> list[str]:
    keys = [arg for key in KEYS for arg in ("--api-key", key)]
    return [*keys, "--data-dir", str(data_dir), "--batch-lease-seconds", "2", "--max-batch-lines-in-flight", "2",
            "--max-num-seqs", "2", "--shutdown-timeout", "0"]


def jsonl(lines: list[dict]) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def request(custom_id: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait_for(client: openai.OpenAI, batch_id: str, done, seconds: float = 600):
    deadline = time.monotonic() + seconds  # a guard against a hang, not a timing bound
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id}: {batch}")


def is_final(batch) -> bool:
    return batch.status in ("completed", "failed", "cancelled", "expired")


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("batch-data")


def test_a_batch_through_the_official_client_answers_as_chat_does(tiny_checkpoint, data_dir, tmp_path):
    server = start_server(tiny_checkpoint, tmp_path, *server_args(data_dir))
    try:
        client, other = server.client("k1"), server.client("k2")
        bodies = {"a": CHAT, "b": {**CHAT, "messages": [{"role": "user", "content": "and dogs?"}]},
                  "bad": {**CHAT, "temperature": -3}}
        file = client.files.create(file=("in.jsonl", jsonl([request(k, v) for k, v in bodies.items()])),
                                   purpose="batch")
        assert client.files.retrieve(file.id).bytes == file.bytes
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"run": "e2e"})
        assert batch.status == "validating" and batch.request_counts.total == 3
        with pytest.raises(openai.NotFoundError):
            other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            other.files.content(file.id)
        done = wait_for(client, batch.id, is_final)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        answers = {line["custom_id"]: line for line in output_lines(client, done.output_file_id)}
        for custom_id in ("a", "b"):
            direct = client.chat.completions.create(**bodies[custom_id])
            body = answers[custom_id]["response"]["body"]
            assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
            assert body["usage"]["completion_tokens"] == direct.usage.completion_tokens
        (refused,) = output_lines(client, done.error_file_id)
        assert refused["custom_id"] == "bad" and refused["response"]["status_code"] == 400
        assert refused["response"]["body"]["error"]["param"] == "temperature"
        assert batch.id in [b.id for b in client.batches.list(limit=5).data]
        # the priority rule: two lines far longer than a chat hold both engine rows (--max-num-seqs 2); an
        # interactive chat takes a row from one of them and is answered before either line finishes
        very_long = {**LONG, "max_tokens": 3000}
        long_file = client.files.create(file=("long.jsonl", jsonl([request(f"c{i}", very_long) for i in range(3)])),
                                        purpose="batch")
        holding = client.batches.create(input_file_id=long_file.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        key = {"Authorization": "Bearer k1"}
        wait_for(client, holding.id, lambda _: server.metric("llava_batch_size", key) == 2)
        chat = client.chat.completions.create(**CHAT)
        assert chat.usage.completion_tokens == CHAT["max_tokens"]
        assert client.batches.retrieve(holding.id).request_counts.completed == 0
        assert client.batches.cancel(holding.id).status in ("cancelling", "cancelled")
        assert client.batches.retrieve(holding.id).request_counts.completed == 0  # the line not started is dropped
    finally:
        stop_server(server)


def test_a_batch_outlives_sigkill_and_sigterm_each_line_answered_once(tiny_checkpoint, data_dir, tmp_path):
    lines = [request(f"line-{i}", LONG) for i in range(NUM_LONG)]
    server = start_server(tiny_checkpoint, tmp_path, *server_args(data_dir))
    client = server.client("k1")
    file = client.files.create(file=("durable.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()

    server = start_server(tiny_checkpoint, tmp_path, *server_args(data_dir))
    client = server.client("k1")
    before = client.batches.retrieve(batch.id).request_counts.completed
    assert before >= 2
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= before + 2)
    chat = client.chat.completions.create(**CHAT)  # answered while batch lines hold both engine rows
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert not is_final(client.batches.retrieve(batch.id))
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert "given back to run later" in server.log()

    server = start_server(tiny_checkpoint, tmp_path, *server_args(data_dir))
    try:
        client = server.client("k1")
        done = wait_for(client, batch.id, is_final)
        assert done.status == "completed" and done.request_counts.completed == NUM_LONG
        answered = [line["custom_id"] for line in output_lines(client, done.output_file_id)]
        assert sorted(answered) == sorted(line["custom_id"] for line in lines)  # each once: none lost, none twice
        assert output_lines(client, done.error_file_id) == []
    finally:
        stop_server(server)
