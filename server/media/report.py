"""What the server tells a client about one media content part: the `media` extension of a response.

The loader builds one `MediaReport` per content part, once; every input it made (a video and its
audio track are two) points at it. The engine's verdict on reusing the encoding arrives with the
request's final outputs and is folded in with `add_cache_hit()`. Event loop only. `to_json()` is
the API's shape (docs/API.md); nothing else renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class MediaReport:
    index: int  # the content part's place among the request's media, 0-based
    modality: str  # "image" | "video" | "audio"
    param: str  # where the part is in the request body, as an error's `param` names it
    source: dict[str, Any]  # how it arrived: kind, bytes, container facts (a JSON object, as reported)
    processing: dict[str, Any]  # what processing made of it (a JSON object, as reported)
    tokens: int  # prompt positions it fills (a video's own, without its audio track)
    audio_track: dict[str, Any] | None = None  # a video's audio track, when the request used it
    encoder_cache_hit: bool | None = None  # every input's encoding was reused; None: the engine did not say

    def add_cache_hit(self, hit: bool) -> None:
        """One input's verdict: the part counts as a hit only if all of its inputs were."""
        self.encoder_cache_hit = hit if self.encoder_cache_hit is None else self.encoder_cache_hit and hit

    def to_json(self) -> dict[str, Any]:
        out = {"index": self.index, "modality": self.modality, "param": self.param, "source": self.source,
               "processing": self.processing, "tokens": self.tokens, "encoder_cache_hit": self.encoder_cache_hit}
        if self.audio_track is not None:
            out["audio_track"] = self.audio_track
        return out
