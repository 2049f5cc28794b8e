"""Video probing and decoding: allowlists, limits, keyframe seeking to the planned frames, audio track."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import MediaLimits
from server.media import MediaError
from server.media.video import decode_video, probe_video
from testkit.media import image_bytes, video_bytes

LIMITS = MediaLimits()


def code_of(data: bytes, limits: MediaLimits = LIMITS) -> str:
    with pytest.raises(MediaError) as e:
        probe_video(data, limits)
    return e.value.code


@pytest.mark.parametrize(("container", "codec", "name"), [
    ("mp4", "mpeg4", "mp4"), ("mp4", "libx264", "mp4"), ("webm", "libvpx-vp9", "webm"), ("avi", "mjpeg", "avi"),
    ("matroska", "libx264", "mkv"),
])
def test_probe_reads_the_header(container, codec, name):
    probe = probe_video(video_bytes(num_frames=12, fps=6, container=container, codec=codec), LIMITS)
    assert (probe.container, probe.width, probe.height) == (name, 64, 48)
    assert probe.num_frames == 12 and abs(probe.native_fps - 6) < 0.01
    assert abs(probe.duration - 2.0) < 0.2


def test_decode_returns_the_planned_frames_in_order():
    data = video_bytes(num_frames=30, fps=10, codec="libx264")
    probe = probe_video(data, LIMITS)
    decoded = decode_video([0, 9, 29], probe.native_fps, False, LIMITS)
    assert len(decoded.frames) == 3 and decoded.frames[0].shape == (48, 64, 3)
    assert [round(t, 2) for t in decoded.timestamps] == [0.0, 0.9, 2.9]
    # the frames differ (noise), so a decoder that returned the same frame thrice would fail here
    assert not np.array_equal(decoded.frames[0], decoded.frames[2])
    # seeking gives the same pixels as decoding everything
    probe_video(data, LIMITS)
    every = decode_video(list(range(30)), probe.native_fps, False, LIMITS)
    assert np.array_equal(every.frames[29], decoded.frames[2])
    assert np.array_equal(every.frames[9], decoded.frames[1])


def test_audio_track_for_use_audio():
    data = video_bytes(num_frames=12, fps=6, audio_seconds=2.0)
    probe = probe_video(data, LIMITS)
    assert probe.has_audio
    decoded = decode_video([0, 6], probe.native_fps, True, LIMITS)
    assert decoded.audio is not None and decoded.audio.dtype == np.float32
    assert abs(len(decoded.audio) / 16000 - 2.0) < 0.2
    probe_video(video_bytes(), LIMITS)
    with pytest.raises(MediaError) as e:
        decode_video([0], 6.0, True, LIMITS)
    assert e.value.code == "invalid_video"


def test_limits_and_refusals():
    assert code_of(video_bytes(num_frames=30, fps=10), MediaLimits(max_video_seconds=2)) == "video_too_long"
    assert code_of(video_bytes(width=96, height=64), MediaLimits(max_video_width=80)) == "video_too_long"
    assert code_of(image_bytes(8, 8, "GIF")) == "unsupported_media_format"
    assert code_of(b"#EXTM3U\n#EXT-X-VERSION:3\nfile:///etc/passwd\n") == "unsupported_media_format"
    assert code_of(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64) == "invalid_video"
