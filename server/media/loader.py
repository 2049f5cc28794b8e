"""Media references of one request -> processed `MediaInput`s, each with its part's report (spec section 2).

For each item, concurrently: fetch (SSRF-safe), decode in the isolated pool, process into tensors
with the checkpoint's processor (in a thread: it runs torch). The first failure cancels the rest
(and a cancelled request cancels all of it: the pool kills a decoder that was mid-call). Each
stage is timed into the metrics. Knows nothing of HTTP beyond the API errors it raises.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from model_runtime import (
    AUDIO_SAMPLE_RATE,
    ImageTokenParts,
    InvalidMediaError,
    LayoutError,
    MediaInput,
    Processor,
)
from server.chat import MediaRef
from server.config import MediaLimits
from server.errors import APIError, from_runtime, media_error
from server.media import MediaError
from server.media.audio import decode_audio
from server.media.fetch import MediaFetcher, too_large
from server.media.image import decode_image
from server.media.pool import DecodePool
from server.media.report import MediaReport
from server.media.video import decode_video, probe_video
from server.metrics import Metrics

_KILL_MARGIN_S = 5.0  # the pool kills a decoder this long after its own time budget


@dataclass(frozen=True)
class LoadedInput:
    item: MediaInput
    report: MediaReport  # of the content part it came from (a video's audio track: the video's)


@dataclass(frozen=True)
class LoadedMedia:
    loaded: list[LoadedInput] = field(default_factory=list)  # every part's inputs, in prompt order
    reports: list[MediaReport] = field(default_factory=list)  # one per content part, in request order

    @property
    def inputs(self) -> list[MediaInput]:
        return [x.item for x in self.loaded]


class MediaLoader:
    def __init__(self, fetcher: MediaFetcher, pool: DecodePool, limits: MediaLimits, processor: Processor,
                 metrics: Metrics) -> None:
        self.fetcher = fetcher
        self.pool = pool
        self.limits = limits
        self.processor = processor
        self.metrics = metrics

    async def load(self, refs: list[MediaRef]) -> LoadedMedia:
        single_crop = self.processor.is_single_crop(sum(1 for r in refs if r.modality == "image"))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._load_one(i, ref, single_crop)) for i, ref in enumerate(refs)]
        except* APIError as errors:
            raise errors.exceptions[0] from None
        loaded = LoadedMedia()
        for task in tasks:
            part = task.result()
            loaded.reports.append(part[0].report)
            loaded.loaded.extend(part)
        return loaded

    async def _load_one(self, index: int, ref: MediaRef, single_crop: bool) -> list[LoadedInput]:
        """The part's inputs in prompt order (a video, then its audio track), all with one report."""
        try:
            data, source = await self._fetch(ref)
            if ref.modality == "image":
                return await self._image(index, ref, data, source, single_crop)
            if ref.modality == "video":
                return await self._video(index, ref, data, source)
            return await self._audio(index, ref, data, source)
        except MediaError as e:
            raise _api_error(e, ref) from None
        except (InvalidMediaError, LayoutError) as e:
            raise from_runtime(e, ref.param, f"the {ref.modality} cannot be used: ", f"invalid_{ref.modality}") from e

    async def _fetch(self, ref: MediaRef) -> tuple[bytes, dict[str, Any]]:
        started = time.perf_counter()
        if ref.audio_data is not None:
            data = _decode_base64(ref.audio_data, self.fetcher.policy.max_bytes("audio"))
            source: dict[str, Any] = {"kind": "input_audio", "declared_format": ref.audio_format}
        else:
            fetched = await self.fetcher.fetch(ref.url or "", ref.modality)
            data = fetched.data
            source = {"kind": fetched.source}
            if fetched.num_redirects:
                source["redirects"] = fetched.num_redirects
        source["bytes"] = len(data)
        self.metrics.media_fetch.labels(modality=ref.modality).observe(time.perf_counter() - started)
        return data, source

    async def _process(self, modality: str, fn, *args) -> MediaInput:
        started = time.perf_counter()
        out = await asyncio.to_thread(fn, *args)
        self.metrics.media_preprocess.labels(modality=modality).observe(time.perf_counter() - started)
        return out

    async def _image(self, index: int, ref: MediaRef, data: bytes, source: dict,
                     single_crop: bool) -> list[LoadedInput]:
        started = time.perf_counter()
        decoded = await self.pool.run(decode_image, data, self.limits,
                                      timeout=self.limits.image_decode_seconds + _KILL_MARGIN_S)
        self.metrics.media_decode.labels(modality="image").observe(time.perf_counter() - started)
        # detail "low": the base view alone (one crop at the tower's size), where the checkpoint has more
        is_base_view = ref.detail == "low" and self.processor.cfg.is_anyres and not single_crop
        single_crop = single_crop or is_base_view
        item = await self._process("image", self.processor.process_image, decoded.image, single_crop)
        source.update(format=decoded.format, width=decoded.width, height=decoded.height)
        if decoded.num_frames > 1:
            source["frames"] = decoded.num_frames
        mode = "base_view" if is_base_view else "single_crop" if single_crop else "anyres"
        processing = {"mode": mode, "detail": ref.detail or "auto", "crops": int(item.data.shape[0]),
                      "size": list(decoded.image.size), "exif_transposed": decoded.is_transposed,
                      "alpha_flattened": decoded.has_alpha,
                      **_layout(self.processor.image_token_parts(decoded.image.size, single_crop))}
        return [LoadedInput(item, MediaReport(index, "image", ref.param, source, processing, item.num_tokens))]

    async def _video(self, index: int, ref: MediaRef, data: bytes, source: dict) -> list[LoadedInput]:
        timeout = self.limits.video_decode_seconds + _KILL_MARGIN_S
        started = time.perf_counter()
        async with self.pool.session() as decoder:
            probe = await decoder.call(probe_video, data, self.limits, timeout=timeout)
            plan = self.processor.plan_video_frames(probe.num_frames, probe.native_fps, num_frames=ref.num_frames,
                                                    fps=ref.fps, max_frames=self.limits.max_video_frames)
            unique = sorted(set(plan.indices))
            decoded = await decoder.call(decode_video, unique, probe.native_fps, ref.use_audio, self.limits,
                                         timeout=timeout)
        self.metrics.media_decode.labels(modality="video").observe(time.perf_counter() - started)
        by_index = dict(zip(unique, decoded.frames, strict=True))
        frames = [Image.fromarray(by_index[i]) for i in plan.indices]
        video = await self._process("video", self.processor.process_video, frames, plan.timestamps, probe.duration)
        source.update(format=probe.container, codec=probe.codec, width=probe.width, height=probe.height,
                      seconds=round(probe.duration, 3), fps=round(probe.native_fps, 3), frames=probe.num_frames)
        processing = {"frames_sampled": len(plan.indices), "frame_indices": list(plan.indices),
                      "timestamps": [round(t, 3) for t in plan.timestamps],
                      "requested": {"num_frames": ref.num_frames, "fps": ref.fps}}
        if not ref.use_audio:
            return [LoadedInput(video, MediaReport(index, "video", ref.param, source, processing, video.num_tokens))]
        assert decoded.audio is not None
        track = await self._process("audio", self.processor.process_audio, decoded.audio, None)
        audio_track = {"sample_rate": decoded.audio_sample_rate, "channels": decoded.audio_channels,
                       "seconds": round(len(decoded.audio) / AUDIO_SAMPLE_RATE, 3), "resampled_to": AUDIO_SAMPLE_RATE,
                       "tokens": track.num_tokens}
        report = MediaReport(index, "video", ref.param, source, processing, video.num_tokens, audio_track)
        return [LoadedInput(video, report), LoadedInput(track, report)]

    async def _audio(self, index: int, ref: MediaRef, data: bytes, source: dict) -> list[LoadedInput]:
        started = time.perf_counter()
        decoded = await self.pool.run(decode_audio, data, self.limits,
                                      timeout=self.limits.image_decode_seconds + _KILL_MARGIN_S)
        self.metrics.media_decode.labels(modality="audio").observe(time.perf_counter() - started)
        item = await self._process("audio", self.processor.process_audio, decoded.waveform, decoded.duration)
        source.update(format=decoded.format, sample_rate=decoded.sample_rate, channels=decoded.num_channels,
                      seconds=round(decoded.duration, 3))
        processing = {"resampled_to": AUDIO_SAMPLE_RATE, "mono": True, "samples": int(len(decoded.waveform))}
        return [LoadedInput(item, MediaReport(index, "audio", ref.param, source, processing, item.num_tokens))]


def _layout(parts: ImageTokenParts) -> dict[str, Any]:
    return {"grid": list(parts.grid) if parts.grid else None,
            "resolution": list(parts.resolution) if parts.resolution else None,
            "token_parts": {"base": parts.base_tokens, "crops": [list(row) for row in parts.crop_tokens],
                            "newlines": parts.newline_tokens}}


def _decode_base64(payload: str, max_bytes: int) -> bytes:
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise too_large("audio", max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError("invalid_audio", "input_audio.data is not valid base64") from e
    if not data:
        raise MediaError("invalid_audio", "input_audio.data is empty")
    return data


def _api_error(e: MediaError, ref: MediaRef) -> APIError:
    if e.code == "timeout":
        code = "video_too_long" if ref.modality == "video" else f"invalid_{ref.modality}"
        return media_error(code, f"the {ref.modality} took too long to decode", ref.param)
    if e.code == "crashed":
        return media_error(f"invalid_{ref.modality}", f"the {ref.modality} could not be decoded", ref.param)
    return media_error(e.code, e.message, ref.param)
