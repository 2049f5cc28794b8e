"""Feature assembly per item (ORIG llava_arch.py, spec 4.2-4.4): projected crop or frame features
-> the rows one image or video occupies in the LM sequence.

Pure tensor functions; the learned vectors (`image_newline`, `faster_token`) are passed in, None
where the checkpoint has none: the model holds each exactly when the config's layout uses it
(`has_image_newline`, `add_faster_video`; `layout.check_video_layout`). The shapes they produce are
exactly the counts of `layout.py` (the model checks every item).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_runtime.arch import layout
from model_runtime.config import LlavaConfig


def merge_image(
    cfg: LlavaConfig, features: torch.Tensor, size: tuple[int, int], image_newline: torch.Tensor | None
) -> torch.Tensor:
    """One image: features [k, T, D] of its k crops (base first) -> rows [n, D]."""
    merge = cfg.mm_patch_merge_type
    if merge == "flat":
        return features.flatten(0, 1)
    if features.shape[0] == 1:
        if cfg.has_image_newline:
            assert image_newline is not None
            return torch.cat([features[0], image_newline[None].to(features.dtype)], dim=0)
        return features[0]
    if not cfg.is_anyres:
        raise layout.LayoutError(f"{features.shape[0]} crops for image_aspect_ratio={cfg.image_aspect_ratio!r}")
    p = cfg.vision.num_patches_per_side
    d = features.shape[-1]
    base, crops = features[0], features[1:]
    nw, nh = layout.anyres_grid(cfg, size)
    if crops.shape[0] != nw * nh:
        raise layout.LayoutError(f"{crops.shape[0]} crops for a {nw}x{nh} grid")
    # stitch crops row-major into one map [D, nh*P, nw*P]: crop (r, c) covers rows r*P.., cols c*P..
    grid = crops.view(nh, nw, p, p, d).permute(4, 0, 2, 1, 3).reshape(d, nh * p, nw * p)
    if "maxpool2x2" in merge:
        grid = F.max_pool2d(grid[None], 2)[0]
    elif "unpad" in merge:
        assert image_newline is not None  # has_image_newline
        top, bottom, left, right = layout.unpad_bounds(size, nh * p, nw * p, cfg.unpad_rounding)
        grid = grid[:, top:bottom, left:right]
        if cfg.anyres_max is not None:
            h, w = grid.shape[1:]
            target = layout.anyres_max_shape(h, w, cfg.anyres_max, p * p)
            if target != (h, w):
                grid = F.interpolate(grid[None], size=target, mode="bilinear")[0]
        grid = torch.cat([grid, image_newline.to(grid.dtype)[:, None, None].expand(d, grid.shape[1], 1)], dim=2)
    rows = grid.flatten(1).transpose(0, 1)
    if "nobase" not in merge:
        rows = torch.cat([base, rows], dim=0)
    return rows


def pool_frames(frames: torch.Tensor, num_patches_per_side: int, stride: int, mode: str) -> torch.Tensor:
    """ORIG get_2dPool: frames [F, P*P, D] -> [F, Q*Q, D] (Q = layout.pooled_side)."""
    p = num_patches_per_side
    maps = frames.view(frames.shape[0], p, p, -1).permute(0, 3, 1, 2)  # [F, D, P, P]
    if mode == "average":
        maps = F.avg_pool2d(maps, stride)
    elif mode == "max":
        maps = F.max_pool2d(maps, stride)
    else:
        side = layout.pooled_side(p, stride, mode)
        maps = F.interpolate(maps, size=(side, side), mode="bilinear")
    return maps.permute(0, 2, 3, 1).reshape(frames.shape[0], -1, frames.shape[-1])


def add_row_newlines(frames: torch.Tensor, image_newline: torch.Tensor) -> torch.Tensor:
    """ORIG add_token_per_grid: frames [F, Q*Q, D] -> [F, Q*(Q+1), D], a newline after every row."""
    num_frames, num_tokens, d = frames.shape
    side = int(num_tokens**0.5)
    rows = frames.view(num_frames, side, side, d)
    newline = image_newline.to(frames.dtype).expand(num_frames, side, 1, d)
    return torch.cat([rows, newline], dim=2).reshape(num_frames, side * (side + 1), d)


def pool_video(cfg: LlavaConfig, frames: torch.Tensor) -> torch.Tensor:
    """Every frame of one video pooled with the checkpoint's mode and `layout.video_pool_stride`:
    frames [F, P*P, C] -> [F, Q*Q, C] (tower features before the projector, or projected rows)."""
    stride = layout.video_pool_stride(cfg)
    return pool_frames(frames, cfg.vision.num_patches_per_side, stride, cfg.mm_spatial_pool_mode)


def merge_video(
    cfg: LlavaConfig,
    frames: torch.Tensor,
    image_newline: torch.Tensor | None,
    faster_token: torch.Tensor | None,
) -> torch.Tensor:
    """One video: projected frames [F, P*P, D] -> rows [n, D]: pooled AFTER the projector (ORIG
    HEAD; with `pools_video_before_projector` they come pooled [F, Q*Q, D]), then newlines by
    mm_newline_position, or SlowFast frames each followed by `faster_token`."""
    layout.check_video_layout(cfg)
    p, mode = cfg.vision.num_patches_per_side, cfg.mm_spatial_pool_mode
    if cfg.is_faster_video:
        assert image_newline is not None and faster_token is not None  # grid newlines, add_faster_video
        stride = layout.video_pool_stride(cfg)
        slow = add_row_newlines(pool_frames(frames, p, stride, mode), image_newline)
        fast = add_row_newlines(pool_frames(frames, p, 2 * stride, mode), image_newline)
        token = faster_token[None].to(frames.dtype)
        pieces = []
        for f in range(frames.shape[0]):
            pieces += [slow[f] if layout.is_slow_frame(cfg, f) else fast[f], token]
        return torch.cat(pieces, dim=0)
    pooled = frames if cfg.pools_video_before_projector else pool_video(cfg, frames)  # [F, Q*Q, D]
    if cfg.mm_patch_merge_type == "flat":
        return pooled.flatten(0, 1)
    position = cfg.mm_newline_position
    if position == "grid":
        assert image_newline is not None  # check_video_layout: grid and frame newlines need has_image_newline
        return add_row_newlines(pooled, image_newline).flatten(0, 1)
    if position == "frame":
        assert image_newline is not None
        newline = image_newline.to(pooled.dtype).expand(pooled.shape[0], 1, pooled.shape[-1])
        return torch.cat([pooled, newline], dim=1).flatten(0, 1)
    rows = pooled.flatten(0, 1)
    if position == "one_token" and cfg.has_image_newline:
        assert image_newline is not None
        rows = torch.cat([rows, image_newline[None].to(rows.dtype)], dim=0)
    return rows
