"""Video frame planning and LLaVA-Video's time instruction (ORIG llava/utils.py
process_video_with_decord, docs/LLaVA_Video_1003.md; spec 3.5).

`plan_video_frames` decides WHICH frames a video contributes before any frame is decoded, so a
decoder only decodes those. Frames then go through the tower processor one by one
(Processor.process_video). Knows nothing of containers, codecs or HTTP.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class FramePlan(NamedTuple):
    """The frames a video contributes, in time order (duplicates possible when a short video is
    force-sampled to more frames than it has, as in ORIG)."""

    indices: tuple[int, ...]  # frame numbers in the decoded stream, 0-based
    timestamps: tuple[float, ...]  # seconds of each frame: index / native fps


def plan_video_frames(
    num_frames_total: int,
    native_fps: float,
    *,
    frames_upbound: int,
    video_fps: float = 1.0,
    force_sample: bool = False,
    num_frames: int | None = None,
    fps: float | None = None,
) -> FramePlan:
    """ORIG's sampling: every round(native_fps / video_fps)-th frame; when that gives more than
    `frames_upbound` frames (or `force_sample`), `frames_upbound` frames spread evenly over the
    whole video instead (linspace, truncated). `frames_upbound` 0 means no cap.

    Request overrides (already clamped by the caller): `num_frames` asks for that many frames
    spread evenly (at most one per decoded frame); `fps` replaces `video_fps`, and with
    `num_frames` also given, `num_frames` is the cap of the fps sampling instead.

    Deliberate difference: timestamps are index / native fps; ORIG divides the fps-sampled indices
    by the sampling step, which is seconds only when video_fps is 1.
    """
    if num_frames_total < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames_total}")
    if not (math.isfinite(native_fps) and native_fps > 0):
        raise ValueError(f"native fps {native_fps!r}: must be a positive number")
    if frames_upbound < 0:
        raise ValueError(f"frames_upbound={frames_upbound}: must be >= 0")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames}: must be >= 1")
        frames_upbound = min(num_frames, num_frames_total)
        force_sample = fps is None
    if fps is not None:
        video_fps = fps
    if not (math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"fps={video_fps!r}: must be a positive number")
    step = max(1, round(native_fps / video_fps))
    indices = list(range(0, num_frames_total, step))
    if frames_upbound > 0 and (len(indices) > frames_upbound or force_sample):
        indices = np.linspace(0, num_frames_total - 1, frames_upbound).astype(int).tolist()
    return FramePlan(tuple(indices), tuple(i / native_fps for i in indices))


def time_instruction(duration: float, timestamps: tuple[float, ...]) -> str:
    """LLaVA-Video's sentence placed between a video's placeholder line and the question."""
    located = ",".join(f"{t:.2f}s" for t in timestamps)
    return (
        f"The video lasts for {duration:.2f} seconds, and {len(timestamps)} frames are uniformly sampled "
        f"from it. These frames are located at {located}.Please answer the following questions related to "
        f"this video."
    )
