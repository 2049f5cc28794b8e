"""The media pipeline: fetch (SSRF-safe), decode in isolated processes, hand tensors to processing.

`MediaError` is how the decoders, which run in other processes and know nothing of HTTP, report a
refusal: a string code of the error table (spec serving.md section 3) and a message of ours.
"""

from __future__ import annotations


class MediaError(Exception):
    """A media item refused or undecodable; `code` is an API error code, `message` is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
