"""Pure layout arithmetic: grid choice, unpadding, the anyres_max cap and TOKEN COUNTS.

The model builds its feature sequences with these functions and the server charges tokens with
them, so usage, context checks and the model can never disagree (spec sections 3-5). Sizes are
ORIG's (W, H) = PIL `image.size`; pinpoints are ORIG's (w, h) pairs in config order. Nothing here
touches tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from model_runtime.config import VIDEO_POOL_STRIDE, LlavaConfig
from model_runtime.constants import AUDIO_CHUNK_FRAMES, AUDIO_CHUNK_SAMPLES, AUDIO_HOP_LENGTH
from model_runtime.errors import RequestInputError


class LayoutError(RequestInputError):
    """An image the configured layout cannot place (ORIG silently used a 2x2 grid instead)."""


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """ORIG mm_utils.select_best_resolution: most effective pixels, then least waste; ties keep
    the earlier candidate."""
    width, height = size
    best: tuple[int, int] | None = None
    best_effective, best_wasted = -1, math.inf
    for w, h in candidates:
        scale = min(w / width, h / height)
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (w, h), effective, wasted
    if best is None:
        raise LayoutError("no grid pinpoints configured")
    return best


def anyres_grid_shape(size: tuple[int, int], pinpoints: Sequence[tuple[int, int]], crop_side: int) -> tuple[int, int]:
    """(nw, nh): crops across and down for an anyres image of `size` (W, H)."""
    if size[0] < 1 or size[1] < 1:
        raise LayoutError(f"image size {size} has an empty side")
    w, h = select_best_resolution(size, pinpoints)
    if w % crop_side or h % crop_side:
        raise LayoutError(f"pinpoint {(w, h)} is not a multiple of the crop side {crop_side}")
    return w // crop_side, h // crop_side


def unpad_bounds(
    size: tuple[int, int], cur_h: int, cur_w: int, rounding: str = "truncate"
) -> tuple[int, int, int, int]:
    """ORIG unpad_image: rows [top, bottom) and cols [left, right) of a (cur_h x cur_w) feature map
    that hold the image rather than the black anyres padding. `rounding` "truncate": int() like ORIG;
    "round": int(round(x, 7)) like transformers' unpad_image (a side of 1.9999999 is 2, not 1)."""
    width, height = size
    side = _truncate if rounding == "truncate" else _round7
    if width / height > cur_w / cur_h:
        new_h = side(height * (cur_w / width))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = side(width * (cur_h / height))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def _truncate(x: float) -> int:
    return int(x)


def _round7(x: float) -> int:
    return int(round(x, 7))


def anyres_max_shape(h: int, w: int, max_crops: int, tokens_per_crop: int) -> tuple[int, int]:
    """ORIG anyres_max_N cap: shrink an unpadded h x w map when it exceeds ~N crops' worth."""
    t = math.sqrt(h * w / (max_crops * tokens_per_crop))
    if t > 1.1:
        target = int(h // t), int(w // t)
        if min(target) < 1:  # ORIG's bilinear resize would fail on an empty side
            raise LayoutError(f"a {h}x{w} feature map cannot be capped to {max_crops} crops without losing a side")
        return target
    return h, w


def anyres_grid(cfg: LlavaConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(nw, nh) for an image of `size` (W, H) under the checkpoint's pinpoints."""
    return anyres_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision.image_size)


def unpadded_map_shape(cfg: LlavaConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the stitched anyres map after unpad and the anyres_max cap, before the newline column."""
    nw, nh = anyres_grid(cfg, size)
    p = cfg.vision.num_patches_per_side
    top, bottom, left, right = unpad_bounds(size, nh * p, nw * p, cfg.unpad_rounding)
    h, w = bottom - top, right - left
    if cfg.anyres_max is not None:
        h, w = anyres_max_shape(h, w, cfg.anyres_max, p * p)
    return h, w


def tokens_per_crop(cfg: LlavaConfig) -> int:
    """Feature rows one S x S crop gives after the projector: P*P, +1 with CLIP's CLS
    (`*cls_patch`), (P//2)^2 through the pooler projector."""
    p = cfg.vision.num_patches_per_side
    if cfg.mm_projector_type == "pooler":
        return (p // 2) ** 2
    return p * p + (1 if cfg.has_cls_token else 0)


def image_token_count(cfg: LlavaConfig, size: tuple[int, int], single_crop: bool = False) -> int:
    """Feature rows one image contributes (spec section 5).

    `single_crop`: the image was processed as one crop (pad/square mode, or any image of a
    multi-image request) rather than anyres.
    """
    p = cfg.vision.num_patches_per_side
    per_crop = tokens_per_crop(cfg)
    merge = cfg.mm_patch_merge_type
    if single_crop or not cfg.is_anyres:
        if merge == "flat":
            return per_crop
        return per_crop + (1 if cfg.has_image_newline else 0)
    nw, nh = anyres_grid(cfg, size)
    if merge == "flat":
        return (1 + nw * nh) * per_crop
    base = 0 if "nobase" in merge else per_crop
    if "maxpool2x2" in merge:
        return base + (nh * p // 2) * (nw * p // 2)
    if "unpad" in merge:
        h, w = unpadded_map_shape(cfg, size)
        return base + h * (w + 1)
    return base + nh * p * nw * p


@dataclass(frozen=True)
class ImageTokenParts:
    """Where an image's feature rows come from (the server's `media` report draws it). The parts sum
    to `image_token_count`; with the anyres_max cap a crop's count is the rows and columns of the
    capped map taken from its share of the uncapped one."""

    base_tokens: int  # the whole image as one crop (0 for `nobase` merges)
    grid: tuple[int, int] | None  # (nw, nh) anyres crops across and down; None: processed as one crop
    resolution: tuple[int, int] | None  # (W, H) the pinpoint the image was resized and padded into
    crop_tokens: tuple[tuple[int, ...], ...]  # [nh][nw] rows each grid crop contributes
    newline_tokens: int  # image_newline rows (one per row of the stitched map, or one after a single crop)

    @property
    def num_tokens(self) -> int:
        return self.base_tokens + sum(map(sum, self.crop_tokens)) + self.newline_tokens


def image_token_parts(cfg: LlavaConfig, size: tuple[int, int], single_crop: bool = False) -> ImageTokenParts:
    """`image_token_count` split by part: the base crop, each grid crop, the newline rows."""
    per_crop = tokens_per_crop(cfg)
    merge = cfg.mm_patch_merge_type
    if single_crop or not cfg.is_anyres:
        newline = 0 if merge == "flat" or not cfg.has_image_newline else 1
        return ImageTokenParts(per_crop, None, None, (), newline)
    nw, nh = anyres_grid(cfg, size)
    resolution = (nw * cfg.vision.image_size, nh * cfg.vision.image_size)
    p = cfg.vision.num_patches_per_side
    if merge == "flat":
        return ImageTokenParts(per_crop, (nw, nh), resolution, ((per_crop,) * nw,) * nh, 0)
    base = 0 if "nobase" in merge else per_crop
    newline = 0
    if "maxpool2x2" in merge:
        rows, cols = _shares([p] * nh, nh * p // 2), _shares([p] * nw, nw * p // 2)
    elif "unpad" in merge:
        top, bottom, left, right = unpad_bounds(size, nh * p, nw * p, cfg.unpad_rounding)
        h, w = unpadded_map_shape(cfg, size)
        rows = _shares([_overlap(r * p, (r + 1) * p, top, bottom) for r in range(nh)], h)
        cols = _shares([_overlap(c * p, (c + 1) * p, left, right) for c in range(nw)], w)
        newline = h
    else:
        rows, cols = [p] * nh, [p] * nw
    crops = tuple(tuple(r * c for c in cols) for r in rows)
    return ImageTokenParts(base, (nw, nh), resolution, crops, newline)


def _overlap(start: int, stop: int, lo: int, hi: int) -> int:
    return max(0, min(stop, hi) - max(start, lo))


def _shares(lengths: list[int], total: int) -> list[int]:
    """Split `total` in proportion to `lengths` at rounded cumulative boundaries (sums exactly)."""
    whole = sum(lengths)
    bounds, running = [0], 0
    for length in lengths:
        running += length
        bounds.append(round(running * total / whole) if whole else 0)
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def pooled_side(num_patches_per_side: int, stride: int, mode: str) -> int:
    """Side of a P x P map after ORIG get_2dPool: bilinear resizes to ceil(P/stride), average and
    max pool with kernel = stride (floor)."""
    if mode == "bilinear":
        return math.ceil(num_patches_per_side / stride)
    return num_patches_per_side // stride


def video_pool_stride(cfg: LlavaConfig) -> int:
    """Stride of every video frame's pooling (slow frames under faster video). ORIG HEAD pools with
    stride 2 after the projector; faster video and pooling before the projector (llava-hf
    LlavaNextVideo) read mm_spatial_pool_stride (default 2)."""
    if cfg.is_faster_video or cfg.pools_video_before_projector:
        return cfg.mm_spatial_pool_stride or VIDEO_POOL_STRIDE
    return VIDEO_POOL_STRIDE


def video_pool_sides(cfg: LlavaConfig) -> tuple[int, int]:
    """(slow, fast) pooled frame sides: every frame pooled with `video_pool_stride`; faster video
    (spec 4.4) pools fast frames with twice it."""
    p, mode = cfg.vision.num_patches_per_side, cfg.mm_spatial_pool_mode
    stride = video_pool_stride(cfg)
    if not cfg.is_faster_video:
        side = pooled_side(p, stride, mode)
        return side, side
    return pooled_side(p, stride, mode), pooled_side(p, 2 * stride, mode)


def is_slow_frame(cfg: LlavaConfig, frame: int) -> bool:
    return frame % cfg.faster_token_stride == 0


def check_video_layout(cfg: LlavaConfig) -> None:
    """Refuse video layouts ORIG cannot build (it would crash mid-request)."""
    if not cfg.has_square_patch_map:
        raise LayoutError(
            f"this checkpoint cannot take videos: pooling needs a P x P patch map, which "
            f"mm_projector_type={cfg.mm_projector_type!r} / mm_vision_select_feature="
            f"{cfg.mm_vision_select_feature!r} do not give"
        )
    if min(video_pool_sides(cfg)) < 1:
        raise LayoutError(
            f"this checkpoint cannot take videos: a {cfg.vision.num_patches_per_side}-patch frame pooled with "
            f"mode {cfg.mm_spatial_pool_mode!r} leaves no tokens"
        )
    needs_newline = cfg.mm_newline_position in ("grid", "frame") and cfg.mm_patch_merge_type != "flat"
    if needs_newline and not cfg.has_image_newline:
        raise LayoutError(
            f"this checkpoint cannot take videos: mm_newline_position={cfg.mm_newline_position!r} needs "
            f"image_newline, which mm_patch_merge_type={cfg.mm_patch_merge_type!r} does not have"
        )


def video_token_count(cfg: LlavaConfig, num_frames: int) -> int:
    """Feature rows a video of `num_frames` sampled frames contributes (spec sections 4.3-4.4, 5)."""
    if num_frames < 1:
        raise LayoutError(f"a video needs at least one frame, got {num_frames}")
    check_video_layout(cfg)
    slow, fast = video_pool_sides(cfg)
    if cfg.mm_patch_merge_type == "flat":
        return num_frames * slow * slow
    position = cfg.mm_newline_position
    if cfg.is_faster_video:
        num_slow = sum(1 for f in range(num_frames) if is_slow_frame(cfg, f))
        return num_slow * slow * (slow + 1) + (num_frames - num_slow) * fast * (fast + 1) + num_frames
    if position == "grid":
        return num_frames * slow * (slow + 1)
    if position == "frame":
        return num_frames * (slow * slow + 1)
    if position == "one_token":
        return num_frames * slow * slow + (1 if cfg.has_image_newline else 0)
    return num_frames * slow * slow  # no_token


def audio_chunk_frames(num_samples: int) -> list[int]:
    """Mel frames of real audio in each 30 s chunk of `num_samples` 16 kHz samples (the last chunk
    is padded with silence to AUDIO_CHUNK_FRAMES before the encoder sees it)."""
    if num_samples < 1:
        raise LayoutError(f"audio of {num_samples} samples is empty")
    num_chunks = math.ceil(num_samples / AUDIO_CHUNK_SAMPLES)
    frames = [AUDIO_CHUNK_FRAMES] * (num_chunks - 1)
    tail = num_samples - (num_chunks - 1) * AUDIO_CHUNK_SAMPLES
    return [*frames, math.ceil(tail / AUDIO_HOP_LENGTH)]


def audio_chunk_token_counts(cfg: LlavaConfig, num_samples: int) -> list[int]:
    """Feature rows of each chunk: the Whisper encoder halves the frames ((L + 1) // 2), the concat-k
    projector divides by k (spec 11.3). Without `speech_trim_padding` every chunk is a full 30 s
    (EgoGPT/Ola: 300 rows per chunk at k = 5); with it the last chunk keeps the rows of real audio
    (at least one)."""
    if cfg.audio is None:
        raise LayoutError("this checkpoint has no audio tower")
    k = cfg.audio.speech_encoder_ds_rate
    frames = audio_chunk_frames(num_samples)
    if not cfg.audio.speech_trim_padding:
        return [((AUDIO_CHUNK_FRAMES + 1) // 2) // k] * len(frames)
    return [max(1, ((f + 1) // 2) // k) for f in frames]


def audio_token_count(cfg: LlavaConfig, num_samples: int) -> int:
    """Feature rows one audio item of `num_samples` 16 kHz samples contributes."""
    return sum(audio_chunk_token_counts(cfg, num_samples))
