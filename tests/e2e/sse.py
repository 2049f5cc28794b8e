"""A streaming chat request read on a thread, event by event (for disconnect and drain tests)."""

from __future__ import annotations

import json
import threading

import httpx


class StreamReader:
    def __init__(self, base_url: str, body: dict, headers: dict | None = None) -> None:
        self.events: list[dict | str] = []
        self.status: int | None = None
        self.error: Exception | None = None
        self.first_token = threading.Event()
        self.done = threading.Event()
        self._close = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, {**body, "stream": True}, headers),
                                        daemon=True)
        self._thread.start()

    def _run(self, base_url: str, body: dict, headers: dict | None) -> None:
        try:
            with httpx.Client(timeout=60) as client, client.stream(
                "POST", base_url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if self._close.is_set():
                        return  # leaving the with-blocks closes the connection mid-stream
                    if not line.startswith("data: "):
                        continue
                    payload = line.removeprefix("data: ")
                    self.events.append(payload if payload == "[DONE]" else json.loads(payload))
                    if any(c.get("delta", {}).get("content") for c in self.chunks[-1:] for c in c.get("choices", [])):
                        self.first_token.set()
        except Exception as e:  # recorded for the test to look at
            self.error = e
        finally:
            self.first_token.set()
            self.done.set()

    @property
    def chunks(self) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for e in self.chunks for c in e.get("choices", []) if c.get("finish_reason")]

    @property
    def ended_with_done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    def close(self) -> None:
        self._close.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()
