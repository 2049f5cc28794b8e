"""MediaReport: the `media` extension's JSON, key for key and in order, and its cache-hit verdict."""

from __future__ import annotations

import json

from server.media.report import MediaReport

SOURCE = {"kind": "http", "redirects": 1, "bytes": 2048, "format": "mp4", "codec": "h264", "width": 64}
PROCESSING = {"frames_sampled": 4, "frame_indices": [0, 3, 6, 9], "timestamps": [0.0, 0.5, 1.0, 1.5],
              "requested": {"num_frames": 4, "fps": None}}
TRACK = {"sample_rate": 22050, "channels": 1, "seconds": 2.0, "resampled_to": 16000, "tokens": 50}


def test_to_json_is_the_reports_json_key_for_key():
    image = MediaReport(0, "image", "messages[0].content[1].image_url", {"kind": "data", "bytes": 10}, {"crops": 5}, 42)
    assert json.dumps(image.to_json()) == json.dumps({
        "index": 0, "modality": "image", "param": "messages[0].content[1].image_url",
        "source": {"kind": "data", "bytes": 10}, "processing": {"crops": 5}, "tokens": 42, "encoder_cache_hit": None})
    video = MediaReport(2, "video", "messages[1].content[0].video_url", SOURCE, PROCESSING, 96, TRACK)
    video.add_cache_hit(True)
    assert json.dumps(video.to_json()) == json.dumps({
        "index": 2, "modality": "video", "param": "messages[1].content[0].video_url", "source": SOURCE,
        "processing": PROCESSING, "tokens": 96, "encoder_cache_hit": True, "audio_track": TRACK})


def test_a_part_is_a_cache_hit_only_if_every_input_was():
    report = MediaReport(0, "video", "p", SOURCE, PROCESSING, 96, TRACK)
    report.add_cache_hit(True)  # the video's frames
    assert report.encoder_cache_hit is True
    report.add_cache_hit(False)  # its audio track
    assert report.encoder_cache_hit is False
    report.add_cache_hit(True)
    assert report.encoder_cache_hit is False
