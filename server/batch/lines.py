"""A batch's line formats (OpenAI's): the input file parsed and checked line by line, the output and error lines.

Input: one JSON object per line, `{"custom_id", "method": "POST", "url", "body"}`. A file that
fails the checks gives every error with its 1-based line number (`errors.data` of the batch) and
queues nothing. Output and error lines: `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`: an answer the API gave (200, or its 4xx) is a `response`; a line
the server could not run at all has `response: null` and an `error`. Knows no HTTP and no engine.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.store import BatchLine

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/completions")
MAX_ERRORS = 100  # a file's validation errors reported (the first ones)
MAX_LINES = 50_000  # OpenAI's limit of requests per batch


@dataclass
class ParsedFile:
    """An input file's lines, or why it cannot run (`errors`, each with its `line`)."""

    lines: list[BatchLine] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    urls: dict[int, str] = field(default_factory=dict)  # line number -> the line's `url`

    def refuse(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def parse_input(content: bytes, endpoint: str | None, model: str) -> ParsedFile:
    """Every line checked: JSON, its fields, POST to `endpoint` (None: any of ENDPOINTS, each line its own, as
    `run-batch` takes them), a unique custom_id, `body.model` == `model`."""
    parsed = ParsedFile()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        parsed.refuse("invalid_file", "the file is not UTF-8 text", None)
        return parsed
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        line = _parse_line(parsed, number, raw, endpoint, model)
        if line is None:
            continue
        if line.custom_id in seen:
            parsed.refuse("duplicate_custom_id", f"custom_id {line.custom_id!r} is on line {seen[line.custom_id]} "
                          "already", number, "custom_id")
            continue
        seen[line.custom_id] = number
        parsed.lines.append(line)
    if not parsed.lines and not parsed.errors:
        parsed.refuse("empty_file", "the file holds no request lines", None)
    if len(parsed.lines) > MAX_LINES:
        parsed.refuse("too_many_requests", f"the file holds {len(parsed.lines)} requests; at most {MAX_LINES}", None)
    return parsed


def _parse_line(parsed: ParsedFile, number: int, raw: str, endpoint: str | None, model: str) -> BatchLine | None:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError:
        parsed.refuse("invalid_json_line", "this line is not valid JSON", number)
        return None
    if not isinstance(item, dict):
        parsed.refuse("invalid_json_line", "this line is not a JSON object", number)
        return None
    custom_id, body = item.get("custom_id"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 128:
        parsed.refuse("invalid_custom_id", "custom_id must be a string of 1 to 128 characters", number, "custom_id")
    elif item.get("method") != "POST":
        parsed.refuse("invalid_method", "method must be POST", number, "method")
    elif endpoint is None and item.get("url") not in ENDPOINTS:
        parsed.refuse("invalid_url", f"url {item.get('url')!r}: expected one of {', '.join(ENDPOINTS)}", number, "url")
    elif endpoint is not None and item.get("url") != endpoint:
        parsed.refuse("mismatched_endpoint", f"url {item.get('url')!r}: this batch's endpoint is {endpoint}",
                      number, "url")
    elif not isinstance(body, dict):
        parsed.refuse("invalid_body", "body must be a JSON object", number, "body")
    elif body.get("model") != model:
        parsed.refuse("model_not_found", f"model {body.get('model')!r} is not served here; try {model!r}",
                      number, "body.model")
    else:
        parsed.urls[number] = item["url"]
        return BatchLine(number, custom_id, body)
    return None


def response_line(custom_id: str, status_code: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """An output or error file line for an answer the API gave (its status and body)."""
    return {"id": new_line_id(), "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body}, "error": None}


def error_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """An error file line for a request that got no answer (the batch expired or was cancelled first)."""
    return {"id": new_line_id(), "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def new_line_id() -> str:
    return "batch_req_" + uuid.uuid4().hex


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """Lines as a JSONL file's bytes (compact JSON, one per line)."""
    return b"".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for line in lines)
