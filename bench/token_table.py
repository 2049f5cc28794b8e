"""Print the token cost of typical inputs for the supported checkpoint families (docs/MODEL.md).

Every number comes from model_runtime/arch/layout.py, the functions the model itself uses.
Usage (from the repository root): .venv/bin/python bench/token_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_runtime.arch.layout import image_token_count, video_token_count  # noqa: E402
from model_runtime.config import LlavaConfig  # noqa: E402

SIGLIP = "google/siglip-so400m-patch14-384"
CLIP = "openai/clip-vit-large-patch14-336"
V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
FAMILIES = {
    "LLaVA-OneVision (Qwen2)": {
        "architectures": ["LlavaQwenForCausalLM"], "mm_vision_tower": SIGLIP, "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "one_token", "mm_spatial_pool_mode": "bilinear",
    },
    "LLaVA-Video (Qwen2)": {
        "architectures": ["LlavaQwenForCausalLM"], "mm_vision_tower": SIGLIP, "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "grid", "mm_spatial_pool_mode": "average",
    },
    "LLaVA-1.6 (Vicuna/Mistral)": {
        "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": CLIP, "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": V16_PINPOINTS, "mm_patch_merge_type": "spatial_unpad",
    },
    "LLaVA-1.5": {
        "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": CLIP, "image_aspect_ratio": "pad",
    },
}
IMAGES = [(384, 384), (640, 480), (1024, 768), (1920, 1080), (4032, 3024), (1080, 1920)]
FRAMES = [8, 32, 64]


def rows() -> list[tuple[str, str, int]]:
    out = []
    for family, raw in FAMILIES.items():
        cfg = LlavaConfig.from_dict({"hidden_size": 4096, "mm_spatial_pool_mode": "bilinear", **raw})
        for w, h in IMAGES:
            out.append((family, f"one image {w}x{h}", image_token_count(cfg, (w, h))))
        out.append((family, "each image of a multi-image request", image_token_count(cfg, (640, 480), single_crop=True)))
        if "Qwen2" not in family:  # LLaVA-1.5/1.6 were not trained on video
            continue
        for num_frames in FRAMES:
            out.append((family, f"video, {num_frames} frames", video_token_count(cfg, num_frames)))
    return out


def markdown() -> str:
    lines = ["| checkpoint family | input | tokens |", "| --- | --- | ---: |"]
    lines += [f"| {family} | {item} | {tokens} |" for family, item, tokens in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
