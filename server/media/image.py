"""Image bytes -> an RGB PIL image, with every limit of spec section 4 (runs in a decoder process).

Formats JPEG, PNG, WebP, GIF (first frame), BMP only; the pixel count is checked from the header
before any pixel is decoded, and again after; EXIF orientation applied; transparency on white.
Pillow's text never leaves this module: failures become `MediaError`s with our messages.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from server.config import MediaLimits
from server.media import MediaError

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# magic bytes of formats people send that we refuse by name rather than as "undecodable"
_KNOWN_UNSUPPORTED = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"), (b"%PDF", "PDF"),
    (b"<svg", "SVG"), (b"<?xml", "SVG/XML"), (b"\x8aMNG", "MNG"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
)
_ISO_BMFF_IMAGES = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}

Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before load; no Pillow warnings


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB
    format: str  # JPEG | PNG | WEBP | GIF | BMP
    width: int  # as stored, before EXIF orientation
    height: int
    num_frames: int  # frames in the file (animated GIF/WebP); only the first is used
    is_transposed: bool  # EXIF orientation applied
    has_alpha: bool  # transparency flattened on white


def sniff_unsupported(data: bytes) -> str | None:
    head = data[:16]
    for magic, name in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_IMAGES.get(head[8:12], "ISO media")
    return None


def decode_image(data: bytes, limits: MediaLimits) -> DecodedImage:
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError as e:
        other = sniff_unsupported(data)
        if other:
            raise MediaError("unsupported_media_format",
                             f"{other} images are not accepted; send {', '.join(ALLOWED_FORMATS)}") from e
        raise MediaError("invalid_image", "the image could not be decoded") from e
    except (OSError, ValueError, SyntaxError) as e:
        log.info("image header rejected: %r", e)
        raise MediaError("invalid_image", "the image could not be decoded") from e
    fmt = str(image.format)
    width, height = image.size
    check_size(width, height, limits)
    try:
        num_frames = int(getattr(image, "n_frames", 1))
        image.seek(0)
        image.load()
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        orientation = image.getexif().get(0x0112, 1)
        image = ImageOps.exif_transpose(image)
        is_transposed = orientation not in (None, 1)
        if has_alpha:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
    except MediaError:
        raise
    except Exception as e:  # any decoder failure is the image's fault; details go to the log
        log.info("image decode failed: %r", e)
        raise MediaError("invalid_image", "the image could not be decoded") from e
    check_size(*image.size, limits)
    return DecodedImage(image, fmt, width, height, num_frames, is_transposed, has_alpha)


def check_size(width: int, height: int, limits: MediaLimits) -> None:
    if width < 1 or height < 1:
        raise MediaError("invalid_image", f"the image is {width}x{height}; both sides must be at least 1 pixel")
    if width * height > limits.max_image_pixels:
        raise MediaError("image_too_large",
                         f"the image is {width}x{height} = {width * height} pixels; at most "
                         f"{limits.max_image_pixels} are accepted")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_image_aspect:
        raise MediaError("invalid_image",
                         f"the image is {width}x{height}, an aspect ratio of 1:{aspect:.0f}; at most "
                         f"1:{limits.max_image_aspect:.0f} is accepted")
