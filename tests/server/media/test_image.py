"""Image decoding limits and normalisation (the decoder function itself, as the pool runs it)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.config import MediaLimits
from server.media import MediaError
from server.media.image import decode_image
from testkit.media import image_bytes, png_header_only

LIMITS = MediaLimits()


def code_of(data: bytes, limits: MediaLimits = LIMITS) -> str:
    with pytest.raises(MediaError) as e:
        decode_image(data, limits)
    return e.value.code


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt):
    decoded = decode_image(image_bytes(40, 30, fmt), LIMITS)
    assert decoded.image.mode == "RGB" and decoded.image.size == (40, 30)
    assert decoded.format == fmt


def test_declared_size_refused_before_decoding():
    # a 10000x10000 header with no real pixel data: refused as too large, never decoded
    assert code_of(png_header_only(10000, 10000)) == "image_too_large"
    assert code_of(image_bytes(30, 20), MediaLimits(max_image_pixels=500)) == "image_too_large"


def test_aspect_ratio_and_garbage():
    assert code_of(image_bytes(400, 1)) == "invalid_image"
    assert code_of(b"hello world, not an image") == "invalid_image"
    assert code_of(image_bytes(8, 8)[:40]) == "invalid_image"  # truncated


def test_other_formats_are_unsupported():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    assert code_of(buf.getvalue()) == "unsupported_media_format"


def test_transparency_goes_on_white_and_exif_orientation_applies():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    decoded = decode_image(buf.getvalue(), LIMITS)
    assert decoded.has_alpha and decoded.image.getpixel((0, 0)) == (255, 255, 255)

    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    decoded = decode_image(buf.getvalue(), LIMITS)
    assert decoded.is_transposed and decoded.image.size == (20, 40)
    assert (decoded.width, decoded.height) == (40, 20)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue(), LIMITS)
    assert decoded.num_frames == 2
    r, g, _ = decoded.image.getpixel((5, 5))
    assert r > 200 and g < 50
