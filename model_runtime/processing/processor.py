"""Host-side inputs for one request: chat turns -> prompt ids, decoded media -> tensors + token counts.

`Processor` is built once per checkpoint (config, tokenizer, template). Its outputs are what the
engine needs to run a request and what the server needs to charge it, computed before the model
sees anything: prompt ids with sentinels, and per media item the tensors and the exact number of
feature rows (`layout.py`). It takes decoded media (PIL images, video frames with their
timestamps, 16 kHz mono waveforms); fetching, demuxing and resampling are the server's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from model_runtime.arch import layout
from model_runtime.config import LlavaConfig
from model_runtime.constants import (
    AUDIO_SAMPLE_RATE,
    MODALITY_BY_PLACEHOLDER,
    PLACEHOLDER_BY_MODALITY,
    SENTINEL_BY_MODALITY,
)
from model_runtime.errors import RequestInputError
from model_runtime.inputs import MediaInput
from model_runtime.processing.audio import log_mel_chunks
from model_runtime.processing.conversation import ChatTurn, ConversationTemplate
from model_runtime.processing.image import ImagePreprocessor
from model_runtime.processing.prompt import PLACEHOLDERS, contains_placeholder, tokenize_prompt
from model_runtime.processing.tool_prompt import has_tool_turns, hermes_turns
from model_runtime.processing.video import FramePlan, plan_video_frames, time_instruction

if TYPE_CHECKING:
    from model_runtime.processing.chat_template import CheckpointChatTemplate

DEFAULT_MAX_FRAMES = 32  # frames per video when the checkpoint states no frames_upbound (serving spec 4)
_VIDEO_LINE = re.compile(re.escape(PLACEHOLDER_BY_MODALITY["video"]) + "\n?")


class InvalidPromptError(RequestInputError):
    """A prompt the builder must refuse: placeholders or special tokens typed as text, or
    placeholders that do not match the media items."""


class InvalidMediaError(RequestInputError):
    """Decoded media the processor cannot use (no frames, empty or non-finite audio, a modality the
    checkpoint has no tower for)."""


@dataclass(frozen=True)
class PromptInput:
    """Prompt ids with one sentinel per media item, and the token accounting."""

    token_ids: list[int]  # real ids + sentinels
    num_text_tokens: int  # real ids only
    num_media_tokens: int  # sum of the items' feature rows

    @property
    def num_tokens(self) -> int:
        return self.num_text_tokens + self.num_media_tokens


class Processor:
    def __init__(self, cfg: LlavaConfig, tokenizer, template: ConversationTemplate | CheckpointChatTemplate) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = template
        self.images = ImagePreprocessor(cfg)
        self._special_strings = tuple(
            s for s in getattr(tokenizer, "all_special_tokens", ()) if s
        ) + tuple(t.content for t in tokenizer.added_tokens_decoder.values())

    @property
    def modalities(self) -> frozenset[str]:
        """Media kinds this checkpoint accepts (no video where its layout cannot build one)."""
        kinds = {"image"}
        try:
            layout.check_video_layout(self.cfg)
            kinds.add("video")
        except layout.LayoutError:
            pass
        if self.cfg.audio is not None:
            kinds.add("audio")
        return frozenset(kinds)

    @property
    def max_video_frames(self) -> int:
        """Frames a video contributes at most unless a request asks otherwise."""
        return self.cfg.frames_upbound or DEFAULT_MAX_FRAMES

    def check_user_text(self, text: str) -> None:
        """Refuse text that would be read as media or as control tokens."""
        if contains_placeholder(text):
            raise InvalidPromptError("text must not contain media placeholders such as <image>")
        for special in self._special_strings:
            if special in text:
                raise InvalidPromptError(f"text must not contain the special token {special}")

    def is_single_crop(self, num_images: int) -> bool:
        """Whether each image of a request with `num_images` images is processed as one crop: ORIG's
        rule for several images; `multi_image_layout: as_single` lays every image out as if alone."""
        return num_images > 1 and self.cfg.multi_image_layout == "single_crop"

    def process_image(self, image: Image.Image, single_crop: bool) -> MediaInput:
        image = image.convert("RGB") if image.mode != "RGB" else image
        return MediaInput(
            modality="image",
            data=self.images.process(image, single_crop),
            image_size=image.size,
            single_crop=single_crop,
            num_tokens=layout.image_token_count(self.cfg, image.size, single_crop=single_crop),
        )

    def image_token_parts(self, size: tuple[int, int], single_crop: bool) -> layout.ImageTokenParts:
        """Where an image of `size` (W, H) gets its tokens: base crop, grid crops, newline rows."""
        return layout.image_token_parts(self.cfg, size, single_crop=single_crop)

    def plan_video_frames(
        self, num_frames_total: int, native_fps: float, num_frames: int | None = None, fps: float | None = None,
        max_frames: int | None = None,
    ) -> FramePlan:
        """Which frames of a video to decode: the checkpoint's sampling (frames_upbound, else
        DEFAULT_MAX_FRAMES; video_fps; force_sample) with the request's overrides. A requested
        `num_frames` is clamped to `max_frames` (a server's ceiling; default: the checkpoint's
        frames_upbound); a ceiling below frames_upbound lowers it, and the checkpoint's own rule
        (force_sample, video_fps) still applies under it."""
        ceiling = self.max_video_frames if max_frames is None else max_frames
        upbound = min(ceiling, self.max_video_frames)
        if num_frames is not None:
            num_frames = min(num_frames, ceiling)
        return plan_video_frames(
            num_frames_total,
            native_fps,
            frames_upbound=upbound,
            video_fps=self.cfg.video_fps,
            force_sample=self.cfg.force_sample,
            num_frames=num_frames,
            fps=fps,
        )

    def process_video(
        self, frames: Sequence[Image.Image], timestamps: Sequence[float], duration: float
    ) -> MediaInput:
        """Planned frames (RGB, in time order) -> [F, 3, S, S] through the tower processor one by one
        (SigLIP squashes, CLIP resizes the shortest edge and centre-crops)."""
        if not frames:
            raise InvalidMediaError("a video needs at least one frame")
        if len(timestamps) != len(frames):
            raise InvalidMediaError(f"{len(frames)} frames but {len(timestamps)} timestamps")
        frames = [f.convert("RGB") if f.mode != "RGB" else f for f in frames]
        return MediaInput(
            modality="video",
            data=self.images.to_tensor(frames),
            num_tokens=layout.video_token_count(self.cfg, len(frames)),
            image_size=frames[0].size,
            timestamps=tuple(float(t) for t in timestamps),
            duration=float(duration),
        )

    def process_audio(self, waveform: np.ndarray, duration: float | None = None) -> MediaInput:
        """16 kHz mono float32 samples -> log-mel chunks [C, n_mels, 3000] (C = ceil(seconds / 30))."""
        if self.cfg.audio is None:
            raise InvalidMediaError("this model has no audio tower")
        waveform = np.asarray(waveform)
        if waveform.ndim != 1 or waveform.shape[0] == 0:
            raise InvalidMediaError(f"audio must be a non-empty mono waveform, got shape {waveform.shape}")
        waveform = waveform.astype(np.float32, copy=False)
        if not np.isfinite(waveform).all():
            raise InvalidMediaError("audio holds non-finite samples")
        num_samples = int(waveform.shape[0])
        return MediaInput(
            modality="audio",
            data=log_mel_chunks(waveform, self.cfg.audio.num_mel_bins),
            num_tokens=layout.audio_token_count(self.cfg, num_samples),
            duration=float(duration) if duration is not None else num_samples / AUDIO_SAMPLE_RATE,
            num_samples=num_samples,
        )

    def build_prompt(self, turns: list[ChatTurn], media: list[MediaInput], tools: list[dict] | None = None,
                     ) -> PromptInput:
        """Render the template, check placeholders against the items, tokenise chunk-wise.

        `tools` (OpenAI function definitions) and tool turns are written in the Hermes format
        (tool_prompt.py) by our templates, and by a checkpoint's own template its own way.

        Each modality needs as many placeholders as items, and the items sharing a sentinel
        (images and videos) must come in the order of their placeholders. With the checkpoint's
        `add_time_instruction`, each video's placeholder line is followed by LLaVA-Video's time
        sentence.
        """
        self._check_placeholders(turns, media)
        if self.cfg.add_time_instruction:
            turns = self._with_time_instructions(turns, [m for m in media if m.modality == "video"])
        if not isinstance(self.template, ConversationTemplate):
            text = self.template.render(turns, tools)
        elif tools or has_tool_turns(turns):
            text = self.template.render(hermes_turns(turns, tools, self.template.default_system))
        else:
            text = self.template.render(turns)
        ids = tokenize_prompt(text, self.tokenizer)
        num_text = sum(1 for t in ids if t >= 0)
        return PromptInput(
            token_ids=ids, num_text_tokens=num_text, num_media_tokens=sum(m.num_tokens for m in media)
        )

    def _check_placeholders(self, turns: list[ChatTurn], media: list[MediaInput]) -> None:
        found = [MODALITY_BY_PLACEHOLDER[p] for t in turns for p in PLACEHOLDERS.findall(t.text)]
        for modality in PLACEHOLDER_BY_MODALITY:
            wanted = found.count(modality)
            have = sum(1 for m in media if m.modality == modality)
            if wanted != have:
                raise InvalidPromptError(f"{wanted} {modality} placeholders but {have} {modality} items")
        for sentinel in set(SENTINEL_BY_MODALITY.values()):
            in_text = [m for m in found if SENTINEL_BY_MODALITY[m] == sentinel]
            in_media = [m.modality for m in media if m.sentinel == sentinel]
            if in_text != in_media:
                raise InvalidPromptError(f"media placeholders in the order {in_text} but items in the order {in_media}")

    @staticmethod
    def _with_time_instructions(turns: list[ChatTurn], videos: list[MediaInput]) -> list[ChatTurn]:
        remaining = iter(videos)

        def add(match: re.Match) -> str:
            video = next(remaining)
            duration = video.duration if video.duration is not None else 0.0
            return f"{PLACEHOLDER_BY_MODALITY['video']}\n{time_instruction(duration, video.timestamps)}\n"

        return [replace(t, text=_VIDEO_LINE.sub(add, t.text)) for t in turns]
