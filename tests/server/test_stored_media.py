"""A stored turn's media by content: data URLs out to blobs and back, the same URLs, once per content."""

from __future__ import annotations

from server.protocols import stored_media
from tests.conftest import png_data_url, random_image


def test_data_urls_become_references_and_come_back_the_same():
    url = png_data_url(random_image(20, 10, seed=1))
    items = [
        {"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": url}, {"type": "input_text", "text": "a"},
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}]},
        {"type": "function_call_output", "call_id": "c", "output": url},  # not media: left alone
    ]
    kept, blobs = stored_media.detach(items)
    assert len(blobs) == 1 and blobs[0].mime_type == "image/png"  # one blob for the same content twice
    parts = kept[0]["content"]
    assert parts[0]["image_url"] == parts[2]["image_url"]["url"] == "llava-media:" + blobs[0].hash
    assert parts[3]["video_url"]["url"] == "https://example.com/v.mp4" and kept[1] == items[1]
    assert stored_media.references(kept) == {blobs[0].hash}
    assert stored_media.attach(kept, {b.hash: b for b in blobs}) == items
    assert items[0]["content"][0]["image_url"] == url  # detach left the request's own items alone
    assert stored_media.attach(kept, {})[0]["content"][0]["image_url"].startswith("llava-media:")
