"""`llava-serve run-batch` on the tiny checkpoint, in-process (no HTTP server): every line answered once in
OpenAI's output format and equal to the app's direct answer (greedy), a refused line with its 400, `--resume`
running only the lines the output lacks, an input that fails the checks refused with its line numbers."""

from __future__ import annotations

import json

from server.cli import main

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "a red square"}], "max_tokens": 6,
        "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "once upon", "max_tokens": 5, "temperature": 0}


def write(path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def request(custom_id: str, body: dict, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def run(tiny_checkpoint, *args: str) -> int:
    return main(["run-batch", "--model", tiny_checkpoint, "--served-model-name", "tiny", "--dtype", "float32",
                 "--no-packed-linear", "--media-workers", "1", *args])


def read(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_batch_answers_each_line_as_the_server_and_resumes(tiny_checkpoint, client, tmp_path, capsys):
    lines = [request("chat", CHAT), request("bad", {**CHAT, "top_p": 7}),
             request("text", COMPLETION, "/v1/completions")]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(source, lines)
    assert run(tiny_checkpoint, "-i", str(source), "-o", str(out)) == 0
    answers = {line["custom_id"]: line for line in read(out)}
    assert sorted(answers) == ["bad", "chat", "text"]
    assert "2 succeeded, 1 failed, 0 skipped" in capsys.readouterr().err
    direct = client.post("/v1/chat/completions", json=CHAT).json()
    body = answers["chat"]["response"]["body"]
    assert body["choices"] == direct["choices"] and answers["chat"]["response"]["status_code"] == 200
    direct = client.post("/v1/completions", json=COMPLETION).json()
    assert answers["text"]["response"]["body"]["choices"] == direct["choices"]
    bad = client.post("/v1/chat/completions", json={**CHAT, "top_p": 7})
    assert answers["bad"]["response"] == {**answers["bad"]["response"], "status_code": 400, "body": bad.json()}

    kept = [line for line in read(out) if line["custom_id"] != "text"]
    write(out, kept)
    with out.open("a") as f:
        f.write('{"custom_id": "cut by a cra')  # a last line a crash left half-written
    assert run(tiny_checkpoint, "-i", str(source), "-o", str(out), "--resume") == 0
    assert "1 succeeded, 0 failed, 2 skipped" in capsys.readouterr().err
    assert sorted(line["custom_id"] for line in read(out)) == ["bad", "chat", "text"]


def test_run_batch_refuses_an_input_that_fails_the_checks(tiny_checkpoint, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    write(source, [request("a", CHAT), request("a", CHAT), request("b", CHAT, "/v1/embeddings")])
    assert run(tiny_checkpoint, "-i", str(source), "-o", str(tmp_path / "out.jsonl")) == 2
    err = capsys.readouterr().err
    assert "line 2: custom_id 'a' is on line 1 already" in err and "line 3: url '/v1/embeddings'" in err
    assert not (tmp_path / "out.jsonl").exists()
