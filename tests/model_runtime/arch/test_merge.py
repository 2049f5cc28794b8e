"""Feature assembly (merge.py) checked element by element against direct computations: video
pooling, grid / frame / one-token newlines, SlowFast video with faster_token, spatial maxpool2x2,
nobase and plain spatial stitching."""

from __future__ import annotations

import pytest
import torch

from model_runtime.arch import layout, merge
from model_runtime.config import LlavaConfig

D = 5


def config(side: int = 8, **overrides) -> LlavaConfig:
    """A SigLIP config with P = side (patch 14) and D = 5; no weights involved."""
    raw = {
        "architectures": ["LlavaQwenForCausalLM"], "hidden_size": D, "mm_vision_tower": "google/siglip",
        "mm_vision_tower_config": {"kind": "siglip", "hidden_size": 4, "intermediate_size": 8,
                                   "num_hidden_layers": 2, "num_attention_heads": 1,
                                   "image_size": 14 * side, "patch_size": 14},
        "mm_patch_merge_type": "spatial_unpad", "mm_spatial_pool_mode": "average",
    }
    raw.update(overrides)
    return LlavaConfig.from_dict(raw)


def frame_maps(num_frames: int, side: int) -> torch.Tensor:
    return torch.randn(num_frames, side * side, D, generator=torch.Generator().manual_seed(num_frames))


def direct_pool(frame: torch.Tensor, side: int, stride: int, mode: str) -> list[list[torch.Tensor]]:
    """One frame [P*P, D] pooled by hand: rows of D-vectors."""
    grid = frame.view(side, side, D)
    if mode == "bilinear":
        out = -(-side // stride)

        def taps(i: int) -> tuple[int, int, float]:  # align_corners=False source coordinate
            src = max((i + 0.5) * side / out - 0.5, 0.0)
            lo = min(int(src), side - 1)
            return lo, min(lo + 1, side - 1), src - lo

        rows = []
        for i in range(out):
            y0, y1, wy = taps(i)
            row = []
            for j in range(out):
                x0, x1, wx = taps(j)
                top = grid[y0, x0] * (1 - wx) + grid[y0, x1] * wx
                bottom = grid[y1, x0] * (1 - wx) + grid[y1, x1] * wx
                row.append(top * (1 - wy) + bottom * wy)
            rows.append(row)
        return rows
    out = side // stride
    reduce = (lambda w: w.mean(0)) if mode == "average" else (lambda w: w.max(0).values)
    return [
        [reduce(grid[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].reshape(-1, D)) for j in range(out)]
        for i in range(out)
    ]


@pytest.mark.parametrize("mode", ["average", "max", "bilinear"])
@pytest.mark.parametrize("side", [3, 8])
def test_video_pooling_matches_direct_windows(mode, side):
    frames = frame_maps(2, side)
    pooled = merge.pool_frames(frames, side, 2, mode)
    q = layout.pooled_side(side, 2, mode)
    assert pooled.shape == (2, q * q, D)
    for f in range(2):
        expected = torch.stack([v for row in direct_pool(frames[f], side, 2, mode) for v in row])
        torch.testing.assert_close(pooled[f], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("position", ["grid", "frame", "one_token", "no_token"])
def test_video_newline_positions_place_the_newline_exactly(position):
    cfg = config(side=8, mm_newline_position=position)
    frames, newline = frame_maps(3, 8), torch.randn(D)
    rows = merge.merge_video(cfg, frames, newline, None)
    expected = []
    for f in range(3):
        pooled = direct_pool(frames[f], 8, 2, "average")
        for row in pooled:
            expected += row + ([newline] if position == "grid" else [])
        if position == "frame":
            expected.append(newline)
    if position == "one_token":
        expected.append(newline)
    assert rows.shape == (len(expected), D) == (layout.video_token_count(cfg, 3), D)
    torch.testing.assert_close(rows, torch.stack(expected), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["average", "bilinear"])
def test_faster_video_slow_fast_frames_and_faster_token(mode):
    # slow frames (f % 3 == 0) pooled with stride 2 (P=8 -> 4x4), fast ones with stride 4 (2x2);
    # each frame's grid rows end in image_newline, each frame ends in faster_token
    cfg = config(side=8, mm_newline_position="grid", add_faster_video=True, mm_spatial_pool_stride=2,
                 faster_token_stride=3, mm_spatial_pool_mode=mode)
    frames, newline, faster = frame_maps(5, 8), torch.randn(D), torch.randn(D)
    rows = merge.merge_video(cfg, frames, newline, faster)
    expected = []
    for f in range(5):
        stride = 2 if f % 3 == 0 else 4
        for row in direct_pool(frames[f], 8, stride, mode):
            expected += row + [newline]
        expected.append(faster)
    assert layout.video_pool_sides(cfg) == (4, 2)
    assert rows.shape == (2 * 4 * 5 + 3 * 2 * 3 + 5, D) == (layout.video_token_count(cfg, 5), D)
    torch.testing.assert_close(rows, torch.stack(expected), atol=1e-6, rtol=1e-6)


def test_flat_video_is_pooled_frames_without_newlines():
    cfg = config(side=8, mm_patch_merge_type="flat", mm_newline_position="grid", mm_spatial_pool_mode="max")
    frames = frame_maps(2, 8)
    rows = merge.merge_video(cfg, frames, None, None)
    expected = [v for f in range(2) for row in direct_pool(frames[f], 8, 2, "max") for v in row]
    torch.testing.assert_close(rows, torch.stack(expected))


# -- images --------------------------------------------------------------------------------------
PINPOINTS = [[42, 84], [84, 42], [84, 84]]


def image_features(num_crops: int, side: int = 3) -> torch.Tensor:
    return torch.randn(num_crops, side * side, D, generator=torch.Generator().manual_seed(num_crops))


def stitched(crops: torch.Tensor, nw: int, nh: int, side: int = 3) -> dict[tuple[int, int], torch.Tensor]:
    """Canvas position (y, x) -> feature, from the crops by hand (crop r*nw + c covers rows r*P..)."""
    canvas = {}
    for r in range(nh):
        for c in range(nw):
            crop = crops[r * nw + c].view(side, side, D)
            for y in range(side):
                for x in range(side):
                    canvas[(r * side + y, c * side + x)] = crop[y, x]
    return canvas


@pytest.mark.parametrize("merge_type", ["spatial", "spatial_nobase", "spatial_maxpool2x2"])
def test_spatial_merges_match_the_stitched_canvas(merge_type):
    cfg = config(side=3, mm_patch_merge_type=merge_type, image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    size = (80, 40)  # wide: 2 crops across, 1 down
    assert layout.anyres_grid(cfg, size) == (2, 1)
    features = image_features(3)
    rows = merge.merge_image(cfg, features, size, None)
    canvas = stitched(features[1:], nw=2, nh=1)
    if merge_type == "spatial_maxpool2x2":  # 3x6 canvas -> floor: 1x3
        body = [torch.stack([canvas[(2 * i + a, 2 * j + b)] for a in (0, 1) for b in (0, 1)]).max(0).values
                for i in range(1) for j in range(3)]
    else:
        body = [canvas[(y, x)] for y in range(3) for x in range(6)]
    base = [] if "nobase" in merge_type else list(features[0])
    expected = torch.stack(base + body)
    assert rows.shape == expected.shape == (layout.image_token_count(cfg, size), D)
    torch.testing.assert_close(rows, expected)


@pytest.mark.parametrize("merge_type", ["spatial_unpad", "spatial_unpad_nobase"])
def test_unpad_merges_keep_image_rows_and_add_a_newline_column(merge_type):
    cfg = config(side=3, mm_patch_merge_type=merge_type, image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    size = (84, 20)  # 2x1 grid: 3 x 6 map; content height int(20 * 6/84) = 1 -> only row 1 is kept
    features, newline = image_features(3), torch.randn(D)
    rows = merge.merge_image(cfg, features, size, newline)
    canvas = stitched(features[1:], nw=2, nh=1)
    top, bottom, left, right = layout.unpad_bounds(size, 3, 6)
    assert (top, bottom, left, right) == (1, 2, 0, 6)
    body = []
    for y in range(top, bottom):
        body += [canvas[(y, x)] for x in range(left, right)] + [newline]
    base = [] if "nobase" in merge_type else list(features[0])
    torch.testing.assert_close(rows, torch.stack(base + body))
    assert rows.shape[0] == layout.image_token_count(cfg, size)


def test_single_crop_items_get_one_trailing_newline_only_with_unpad():
    features, newline = image_features(1), torch.randn(D)
    with_unpad = merge.merge_image(config(side=3, image_aspect_ratio="pad"), features, (10, 20), newline)
    torch.testing.assert_close(with_unpad, torch.cat([features[0], newline[None]]))
    plain = merge.merge_image(config(side=3, mm_patch_merge_type="spatial", image_aspect_ratio="pad"),
                              features, (10, 20), None)
    torch.testing.assert_close(plain, features[0])
