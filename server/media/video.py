"""Video bytes -> sampled RGB frames (+ the audio track) with PyAV (runs in a decoder process).

Two calls on the same decoder process: `probe_video` reads the container header (and, when the
header lacks them, scans packets without decoding) and keeps the bytes; the server plans which
frames to take; `decode_video` seeks to the keyframe before each planned frame instead of
decoding the whole file. Containers mp4/mov, webm/mkv, avi are recognised by their magic bytes
and opened with that demuxer only; codecs h264, hevc, vp8, vp9, av1, mpeg4, mjpeg; nested opens
(references, playlists) are refused; a wall-clock budget bounds the decode.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import av
import numpy as np

from server.config import MediaLimits
from server.media import MediaError
from server.media.audio import to_mono_16k

log = logging.getLogger(__name__)

ALLOWED_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg")
SEEK_GAP_S = 2.0  # seek when the next planned frame is further ahead than this; else decode on
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_stash: dict[str, bytes] = {}  # the bytes of the video this process probed last


@dataclass(frozen=True)
class VideoProbe:
    container: str  # mp4 | mov | webm | mkv | avi
    codec: str
    width: int
    height: int
    duration: float  # seconds
    native_fps: float
    num_frames: int  # frames in the stream
    has_audio: bool


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[np.ndarray]  # each [H, W, 3] uint8 RGB
    timestamps: list[float]  # seconds of each frame from the start
    audio: np.ndarray | None  # [num_samples] float32 mono 16 kHz, when asked for
    audio_sample_rate: int | None  # of the source track
    audio_channels: int | None


def sniff_container(data: bytes) -> tuple[str, str]:
    """(demuxer, name) from magic bytes; refuses everything else before FFmpeg probes it."""
    if data[4:8] in _ISO_BOXES:
        return "mov", "mov" if data[8:12] == b"qt  " else "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska", "webm" if b"webm" in data[:64] else "mkv"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi", "avi"
    raise MediaError("unsupported_media_format", "the video is not an MP4/MOV, WebM/MKV or AVI file")


def _refuse_nested(url: str, flags: int, options: dict):
    raise PermissionError("nested opens are refused")


def open_container(data: bytes, demuxer: str):
    try:
        return av.open(io.BytesIO(data), mode="r", format=demuxer, io_open=_refuse_nested,
                       options={"enable_drefs": "0", "use_absolute_path": "0"})
    except Exception as e:  # FFmpeg's text stays in the log
        log.info("video open failed: %r", e)
        raise MediaError("invalid_video", "the video could not be decoded") from e


def probe_video(data: bytes, limits: MediaLimits) -> VideoProbe:
    demuxer, name = sniff_container(data)
    _stash.clear()
    deadline = time.monotonic() + limits.video_decode_seconds
    with open_container(data, demuxer) as container:
        if not container.streams.video:
            raise MediaError("invalid_video", "the file holds no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.codec.canonical_name
        if codec not in ALLOWED_CODECS:
            raise MediaError("unsupported_media_format",
                             f"video codec {codec} is not accepted; use {', '.join(ALLOWED_CODECS)}")
        width, height = stream.codec_context.width, stream.codec_context.height
        check_frame_size(width, height, limits)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        duration = _header_duration(container, stream)
        if duration is not None and duration > limits.max_video_seconds:
            raise too_long(duration, limits)
        num_frames = int(stream.frames or 0)
        if not num_frames or duration is None or fps <= 0:
            num_frames, duration, fps = _scan_packets(container, stream, limits, deadline)
        has_audio = bool(container.streams.audio)
    if num_frames < 1 or fps <= 0:
        raise MediaError("invalid_video", "the video holds no frames")
    _stash["data"] = data
    _stash["demuxer"] = demuxer.encode()
    return VideoProbe(name, codec, width, height, duration, fps, num_frames, has_audio)


def decode_video(indices: list[int], native_fps: float, use_audio: bool, limits: MediaLimits) -> DecodedVideo:
    """Decode the frames at `indices` (of the stream probed last) and, if asked, the audio track."""
    data, demuxer = _stash.get("data"), _stash.get("demuxer", b"").decode()
    if data is None:
        raise MediaError("invalid_video", "the video could not be decoded")
    deadline = time.monotonic() + limits.video_decode_seconds
    times = [i / native_fps for i in sorted(indices)]
    with open_container(data, demuxer) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames, timestamps = _decode_at(container, stream, times, native_fps, limits, deadline)
    audio, rate, channels = None, None, None
    if use_audio:
        with open_container(data, demuxer) as container:
            if not container.streams.audio:
                raise MediaError("invalid_video", "use_audio was asked for, but the video has no audio track")
            audio, rate, channels = _decode_audio_track(container, container.streams.audio[0], limits, deadline)
    _stash.clear()
    return DecodedVideo(frames, timestamps, audio, rate, channels)


def check_frame_size(width: int, height: int, limits: MediaLimits) -> None:
    if width < 1 or height < 1:
        raise MediaError("invalid_video", "the video has no frame size")
    if max(width, height) > limits.max_video_width or min(width, height) > limits.max_video_height:
        raise MediaError("video_too_long",
                         f"the video's frames are {width}x{height}; at most {limits.max_video_width}x"
                         f"{limits.max_video_height} are accepted")


def too_long(seconds: float, limits: MediaLimits) -> MediaError:
    return MediaError("video_too_long",
                      f"the video lasts {seconds:.1f} s; at most {limits.max_video_seconds:.0f} s are accepted")


def _over_budget(limits: MediaLimits) -> MediaError:
    return MediaError("video_too_long",
                      f"the video took more than {limits.video_decode_seconds:.0f} s to decode")


def _header_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _scan_packets(container, stream, limits: MediaLimits, deadline: float) -> tuple[int, float, float]:
    """Count frames and measure the duration from packet timestamps, without decoding."""
    pts: list[int] = []
    for packet in container.demux(stream):
        if packet.pts is not None:
            pts.append(packet.pts)
        if len(pts) % 256 == 0 and time.monotonic() > deadline:
            raise _over_budget(limits)
    if not pts or stream.time_base is None:
        raise MediaError("invalid_video", "the video holds no frames")
    span = float((max(pts) - min(pts)) * stream.time_base)
    fps = (len(pts) - 1) / span if span > 0 and len(pts) > 1 else float(stream.average_rate or 1)
    duration = len(pts) / fps
    if duration > limits.max_video_seconds:
        raise too_long(duration, limits)
    return len(pts), duration, fps


def _decode_at(container, stream, times: list[float], fps: float, limits: MediaLimits,
               deadline: float) -> tuple[list[np.ndarray], list[float]]:
    tb = stream.time_base
    start = stream.start_time or 0
    tolerance = 0.5 / fps
    frames, timestamps = [], []
    decoder, last, last_time = None, None, float("-inf")
    try:
        for t in times:
            if decoder is None or t - last_time > SEEK_GAP_S:
                container.seek(start + int(t / tb), stream=stream, backward=True, any_frame=False)
                decoder = container.decode(stream)
            chosen = None
            for frame in decoder:
                if time.monotonic() > deadline:
                    raise _over_budget(limits)
                last = frame
                last_time = float((frame.pts - start) * tb) if frame.pts is not None else last_time + 1 / fps
                if last_time >= t - tolerance:
                    chosen = frame
                    break
            chosen = chosen or last  # past the last frame: repeat it
            if chosen is None:
                raise MediaError("invalid_video", "the video holds no decodable frames")
            check_frame_size(chosen.width, chosen.height, limits)
            frames.append(chosen.to_ndarray(format="rgb24"))
            timestamps.append(max(last_time, 0.0))
    except MediaError:
        raise
    except Exception as e:
        log.info("video decode failed: %r", e)
        raise MediaError("invalid_video", "the video could not be decoded") from e
    return frames, timestamps


def _decode_audio_track(container, stream, limits: MediaLimits, deadline: float):
    rate = stream.codec_context.sample_rate
    channels = stream.codec_context.channels
    if not rate or not limits.min_audio_sample_rate <= rate <= limits.max_audio_sample_rate:
        raise MediaError("unsupported_media_format", f"the video's audio track has a sample rate of {rate} Hz")
    max_samples = int(limits.max_video_seconds * rate)
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks: list[np.ndarray] = []
    num_samples = 0
    try:
        for frame in container.decode(stream):
            if time.monotonic() > deadline:
                raise _over_budget(limits)
            for out in resampler.resample(frame):
                planar = out.to_ndarray()  # [channels, n] float32
                chunks.append(planar.mean(axis=0, dtype=np.float32))
                num_samples += planar.shape[1]
            if num_samples > max_samples:
                raise too_long(num_samples / rate, limits)
    except MediaError:
        raise
    except Exception as e:
        log.info("audio track decode failed: %r", e)
        raise MediaError("invalid_video", "the video's audio track could not be decoded") from e
    if not chunks:
        raise MediaError("invalid_video", "the video's audio track holds no samples")
    return to_mono_16k(np.concatenate(chunks), rate), rate, channels
