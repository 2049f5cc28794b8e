"""The media of a stored Responses turn, kept by content: data URLs in its input items <-> state-store blobs.

Before a turn is stored, every data URL of an image, video or audio part (`input_image.image_url`,
chat's `image_url` / `video_url` / `audio_url`) is replaced by a reference to its bytes
(`llava-media:<sha256>`) and the bytes go to the store once per content (server/store/); when a
stored turn is read back (chained, or listed), the references become the same data URLs again,
so the next turn's prompt has the very same media and hits the prefix cache. URLs that are not
data URLs stay as they are (fetched again when the conversation continues).
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Iterator
from typing import Any

from server.store import MediaBlob

REFERENCE = "llava-media:"


def _url_slots(items: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str]]:
    """(the dict holding a media URL, its key) for every media part of every message item."""
    for item in items:
        content = item.get("content")
        if item.get("type", "message") != "message" or not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "input_image" and isinstance(part.get("image_url"), str):
                yield part, "image_url"
            for key in ("image_url", "video_url", "audio_url"):
                holder = part.get(key)
                if part.get("type") == key and isinstance(holder, dict) and isinstance(holder.get("url"), str):
                    yield holder, "url"


def _map_urls(items: list[dict[str, Any]], fn: Callable[[str], str]) -> list[dict[str, Any]]:
    out = copy.deepcopy(items)
    for holder, key in _url_slots(out):
        holder[key] = fn(holder[key])
    return out


def detach(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[MediaBlob]]:
    """The items with each data URL replaced by a reference, and the blobs they refer to."""
    blobs: dict[str, MediaBlob] = {}

    def to_reference(url: str) -> str:
        blob = _blob(url)
        if blob is None:
            return url
        blobs.setdefault(blob.hash, blob)
        return REFERENCE + blob.hash

    return _map_urls(items, to_reference), list(blobs.values())


def attach(items: list[dict[str, Any]], blobs: dict[str, MediaBlob]) -> list[dict[str, Any]]:
    """The items with each reference back as its data URL (a blob the store no longer has stays a reference)."""

    def to_data_url(url: str) -> str:
        blob = blobs.get(url.removeprefix(REFERENCE)) if url.startswith(REFERENCE) else None
        if blob is None:
            return url
        return f"data:{blob.mime_type};base64,{base64.b64encode(blob.data).decode()}"

    return _map_urls(items, to_data_url)


def references(items: list[dict[str, Any]]) -> set[str]:
    return {holder[key].removeprefix(REFERENCE) for holder, key in _url_slots(items)
            if holder[key].startswith(REFERENCE)}


def _blob(url: str) -> MediaBlob | None:
    if not url.startswith("data:"):
        return None
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        return None
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None  # the pipeline refused it already; nothing to keep
    return MediaBlob(data, header.removeprefix("data:").removesuffix(";base64") or "application/octet-stream")
