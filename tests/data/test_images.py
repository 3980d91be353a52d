"""Safe decoding of single images: modes, alpha, 16-bit, and every kind of bad file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.data.images import ImageDecodeError, decode_image, probe_size, resize_rgb


def _bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no data: a decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_rgb_png_round_trip() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_image(_bytes(Image.fromarray(arr)))
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = decode_image(_bytes(Image.fromarray(gray)))
    assert out.shape == (4, 4, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


@pytest.mark.parametrize(("background", "expected"), [((0, 0, 0), 0), ((255, 255, 255), 255)])
def test_transparent_pixels_take_background(background: tuple[int, int, int], expected: int) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [200, 10, 10, 255]  # opaque red; the rest fully transparent
    out = decode_image(_bytes(Image.fromarray(rgba)), background=background)
    assert out[0, 0].tolist() == [200, 10, 10]
    assert out[1, 1].tolist() == [expected] * 3


def test_palette_with_transparency() -> None:
    img = Image.new("P", (3, 3), 0)
    img.putpalette([0, 255, 0] + [0, 0, 255] * 255)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    out = decode_image(_bytes(img))
    assert out[1, 1].tolist() == [0, 0, 255]
    assert out[0, 0].tolist() == [0, 0, 0]  # the transparent palette entry (green) composites onto black


def test_sixteen_bit_grayscale_is_scaled() -> None:
    arr = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = decode_image(_bytes(img))
    assert out[..., 0].tolist() == [[0, 255], [100, 200]]


def test_resize_to_target() -> None:
    arr = np.full((64, 48, 3), 90, dtype=np.uint8)
    out = decode_image(_bytes(Image.fromarray(arr)), size=(16, 12))
    assert out.shape == (16, 12, 3)
    assert np.all(out == 90)  # a flat image stays flat under antialiased resizing
    assert resize_rgb(arr, (8, 8)).shape == (8, 8, 3)


def test_empty_file_refused() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_corrupt_file_refused() -> None:
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"this is not an image at all" * 10)


def test_truncated_jpeg_refused() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _bytes(Image.fromarray(arr), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_bomb_header_refused_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match="bomb|pixel"):
        decode_image(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageDecodeError, match="pixel cap"):
        decode_image(_png_header_only(7000, 7000))  # above our cap, below PIL's


def test_pixel_cap_is_a_parameter() -> None:
    data = _bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageDecodeError, match="pixel cap"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data).shape == (100, 100, 3)


def test_probe_size_reads_header(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (20, 10)).save(path)
    assert probe_size(path) == (10, 20)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"junk")
    with pytest.raises(ImageDecodeError):
        probe_size(bad)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_and_plain_images_stay_put(fmt: str) -> None:
    """A camera's 'rotate 90' tag turns the pixels (orientation 6: the stored 10x20 shows as 20x10);
    the same image without the tag keeps its shape (JPEGs without EXIF skip the EXIF parse)."""
    img = Image.new("RGB", (20, 10), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, 4, 10))  # a blue stripe on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes())
    turned = decode_image(buf.getvalue())
    plain = decode_image(_bytes(img, fmt))
    assert plain.shape == (10, 20, 3) and turned.shape == (20, 10, 3)
    # Orientation 6 = rotate 90 degrees clockwise to display: the left edge becomes the top edge.
    assert turned[0, :, 2].mean() > 150 and turned[-1, :, 0].mean() > 150
    assert probe_size(io.BytesIO(buf.getvalue())) == (20, 10)
