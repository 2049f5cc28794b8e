"""Hostile media is refused before work where it can be, without the server's memory growing."""

from __future__ import annotations

import openai
import pytest

from testkit.media import b64, data_url, image_bytes, long_silent_flac, png_header_only, video_bytes

pytestmark = pytest.mark.xdist_group("local")


def test_too_many_items_are_refused_before_any_fetch(local_server, origin):
    urls = [origin.add(f"/many-{i}.png", image_bytes(8, 8)) for i in range(9)]
    with local_server.client() as client, pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": u}} for u in urls]}])
    assert e.value.code == "too_many_media_items"
    assert sum(origin.hits[f"/many-{i}.png"] for i in range(9)) == 0
    videos = [{"type": "video_url", "video_url": {"url": origin.add(f"/many-{i}.mp4", b"x")}} for i in range(3)]
    with local_server.client() as client, pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": videos}])
    assert e.value.code == "too_many_media_items" and sum(origin.hits[f"/many-{i}.mp4"] for i in range(3)) == 0


def test_bombs_are_refused_before_decoding_and_memory_stays_bounded(local_server, origin):
    """Each bomb is refused from its header, so no decode runs into its time limit (that kills and
    replaces the decoder process); how fast a refusal is belongs to `python -m bench.stress`."""
    bombs = [
        ("image_too_large", {"type": "image_url", "image_url": {"url": origin.add(
            "/bomb.png", png_header_only(10000, 10000))}}),
        ("audio_too_long", {"type": "input_audio", "input_audio": {"data": b64(long_silent_flac(3600)),
                                                                   "format": "flac"}}),
        ("audio_too_long", {"type": "audio_url", "audio_url": {"url": origin.add("/hour.flac",
                                                                                 long_silent_flac(3600))}}),
        ("video_too_long", {"type": "video_url", "video_url": {"url": origin.add(
            "/long.mp4", video_bytes(num_frames=44, fps=2))}}),
        ("video_too_long", {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes(
            num_frames=2, fps=2, width=4000, height=64))}}),
    ]
    rss_before, processes = local_server.rss_bytes(), local_server.descendants()
    with local_server.client() as client:
        for code, part in bombs * 2:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": [part]}])
            assert e.value.code == code
        assert local_server.rss_bytes() - rss_before < 150 * 2**20
        assert local_server.descendants() == processes
        ok = client.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].finish_reason in ("length", "stop")
