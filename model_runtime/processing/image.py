"""Image preprocessing: PIL RGB image -> crop tensors, exactly as ORIG feeds the tower.

Reproduces ORIG `llava/mm_utils.py` (process_anyres_image, resize_and_pad_image, expand2square)
and the towers' processors: SigLIP's hard-coded one (`siglip_encoder.py`: squash-resize to S x S,
bicubic, x/255, mean 0.5 / std 0.5) and transformers' CLIPImageProcessor as ORIG loads it
(shortest edge -> S, bicubic, centre crop S x S, x/255, OpenAI CLIP mean/std). Video frames go
through the same tower processor (`to_tensor`). Takes decoded images; knows nothing of files or HTTP.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from model_runtime.arch.layout import select_best_resolution
from model_runtime.config import LlavaConfig

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImagePreprocessor:
    """The tower's processor plus the anyres / pad / square front ends."""

    def __init__(self, cfg: LlavaConfig) -> None:
        self.cfg = cfg
        self.side = cfg.vision.image_size
        self.is_clip = cfg.vision.kind == "clip"
        self.mean = np.asarray(CLIP_MEAN if self.is_clip else SIGLIP_MEAN, dtype=np.float32)
        self.std = np.asarray(CLIP_STD if self.is_clip else SIGLIP_STD, dtype=np.float32)

    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """The tower's processor on each image or video frame -> [n, 3, S, S] float32."""
        arrays = []
        for image in images:
            image = image.convert("RGB") if image.mode != "RGB" else image
            if self.is_clip:
                resized = center_crop(resize_shortest_edge(image, self.side), self.side)
            else:
                resized = image.resize((self.side, self.side), Image.Resampling.BICUBIC)
            x = (np.asarray(resized, dtype=np.float64) * (1 / 255)).astype(np.float32)
            x = (x - self.mean) / self.std
            arrays.append(x.transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))

    def anyres(self, image: Image.Image) -> torch.Tensor:
        """Base crop (squashed whole image) + grid crops of the letterboxed image -> [1 + nw*nh, 3, S, S]."""
        best = select_best_resolution(image.size, self.cfg.image_grid_pinpoints)
        canvas = resize_and_pad(image, best)
        s = self.side
        crops = [
            canvas.crop((left, top, left + s, top + s))
            for top in range(0, best[1], s)
            for left in range(0, best[0], s)
        ]
        base = image.resize((s, s), Image.Resampling.BICUBIC)
        return self.to_tensor([base, *crops])

    def pad(self, image: Image.Image) -> torch.Tensor:
        """Letterbox onto a square canvas of the processor's mean colour ((127,127,127) SigLIP,
        (122,116,104) CLIP) -> [1, 3, S, S]."""
        fill = tuple(int(255 * m) for m in self.mean)
        return self.to_tensor([expand_to_square(image, fill)])

    def square(self, image: Image.Image) -> torch.Tensor:
        """The tower processor on the raw image (SigLIP squashes; CLIP resizes and centre-crops)."""
        return self.to_tensor([image])

    def process(self, image: Image.Image, single_crop: bool) -> torch.Tensor:
        """Crops for one image: anyres unless `single_crop` (multi-image requests) or the
        checkpoint is not anyres; `pad` mode letterboxes, anything else squashes."""
        if self.cfg.is_anyres and not single_crop:
            return self.anyres(image)
        if single_crop or self.cfg.image_aspect_ratio == "pad":
            return self.pad(image)
        return self.square(image)


def resize_and_pad(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """ORIG resize_and_pad_image: keep aspect, fit inside `target` (w, h), centre on black."""
    width, height = image.size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_h, new_w = target_h, min(math.ceil(width * scale_h), target_w)
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """ORIG expand2square: paste centred on a square canvas of side max(W, H)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def resize_shortest_edge(image: Image.Image, side: int) -> Image.Image:
    """CLIPImageProcessor resize: shortest edge -> `side`, the other int(side * long / short), bicubic."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(side * long / short)
    size = (side, new_long) if width <= height else (new_long, side)
    return image.resize(size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, side: int) -> Image.Image:
    """CLIPImageProcessor centre crop to side x side (offsets floor((dim - side) / 2))."""
    width, height = image.size
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))
