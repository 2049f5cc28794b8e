"""Image decoding: `data:` URLs -> RGB PIL images, with our own error messages.

Pillow's text never reaches the client. Fetching remote URLs comes with the server issue.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re

from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import BlockedMediaURL, InvalidImage, UnsupportedMedia

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_PIXELS = 16_777_216  # 16.7 Mpx, checked from the header before decoding
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def decode_data_url(url: str, param: str) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        if url.startswith(("http://", "https://")):
            raise BlockedMediaURL("remote image URLs are not enabled in this version; send a data: URL", param=param)
        raise InvalidImage("image_url must be a data: URL (data:image/png;base64,...)", param=param)
    if not m.group("b64"):
        raise InvalidImage("data: URLs must be base64-encoded", param=param)
    try:
        return base64.b64decode(url[m.end():], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage("the data: URL's base64 payload is malformed", param=param) from e


def load_image(data: bytes, param: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise InvalidImage("the image could not be decoded", param=param) from e
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedMedia(f"image format {image.format} is not accepted; use {', '.join(ALLOWED_FORMATS)}",
                               param=param)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InvalidImage(f"image of {width}x{height} exceeds {MAX_PIXELS} pixels", param=param, code="image_too_large")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.info("image decode failed for %s: %s", param, e)
        raise InvalidImage("the image could not be decoded", param=param) from e
