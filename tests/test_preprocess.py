"""Preprocessing parity with the original: PIL `convert("RGB")` + torchvision transforms."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liteclip

import reference
from conftest import CAT, REAL_IMAGES

MAD_LIMIT = 0.01  # mean absolute difference, normalised units (the bound)


def _reference(path_or_image, size=224) -> np.ndarray:
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return reference.image_transform(size)(img.convert("RGB")).numpy()


def _mad(a, b) -> float:
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("path", REAL_IMAGES, ids=lambda p: p.name)
def test_real_photos_match_torchvision(path):
    got = liteclip.preprocess(str(path))
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    assert _mad(got, _reference(path)) <= MAD_LIMIT


@pytest.mark.parametrize("path", REAL_IMAGES, ids=lambda p: p.name)
def test_resize_is_bit_exact_with_pillow_on_the_same_pixels(path):
    """Given PIL's decoded pixels, only the resize differs: it reproduces Pillow's exactly."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(liteclip.preprocess(pixels), _reference(path))


def _odd_images(rng) -> dict[str, Image.Image]:
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    smooth = np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)
    return {
        "1x1": rgb(1, 1),
        "4000x30": rgb(4000, 30),
        "30x4000": rgb(30, 4000),
        "225x224": rgb(225, 224),
        "grey": Image.fromarray(smooth, mode="L"),
        "grey_alpha": Image.fromarray(np.dstack([smooth, 255 - smooth])).convert("LA"),
        "rgba": Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), mode="RGBA"),
        "palette": rgb(90, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=37),
        "bilevel": Image.fromarray(smooth > 128).convert("1"),
    }


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "GIF", "TIFF"])
def test_odd_images_match_torchvision(tmp_path, fmt):
    rng = np.random.default_rng(0)
    for name, img in _odd_images(rng).items():
        if fmt == "GIF" and img.mode in ("LA", "RGBA"):
            continue  # GIF has no such modes
        if fmt in ("BMP", "TIFF") and img.mode == "LA":
            continue  # BMP has no grey+alpha; the Rust TIFF decoder lacks it (see README)
        if fmt == "TIFF" and img.mode == "P":
            continue  # palette TIFF: not supported by the Rust TIFF decoder (see README)
        path = tmp_path / f"{name}.{fmt.lower()}"
        save_args = {"lossless": True} if fmt == "WEBP" else {}
        img.save(path, format=fmt, **save_args)
        got = liteclip.preprocess(str(path))
        mad = _mad(got, _reference(path))
        assert mad <= MAD_LIMIT, (name, fmt, mad)


def test_jpeg_grey_and_cmyk_match_torchvision(tmp_path):
    base = Image.open(CAT).convert("RGB")
    for mode in ["L", "CMYK"]:
        path = tmp_path / f"cat_{mode}.jpg"
        base.convert(mode).save(path, quality=92)
        mad = _mad(liteclip.preprocess(str(path)), _reference(path))
        assert mad <= MAD_LIMIT, (mode, mad)


def test_sixteen_bit_png(tmp_path):
    """16-bit RGB: PIL keeps the high byte; we scale to 8 bits (at most one level apart)."""
    rng = np.random.default_rng(3)
    hi = rng.integers(0, 256, (40, 60, 3), dtype=np.uint16)
    arr16 = (hi << 8) | hi  # 8-bit values stretched to 16 bits: both conversions agree
    path = tmp_path / "rgb16.png"
    _write_png16(path, arr16)
    expected = reference.image_transform()(Image.fromarray(hi.astype(np.uint8))).numpy()
    assert _mad(liteclip.preprocess(str(path)), expected) <= MAD_LIMIT


def _write_png16(path: Path, arr: np.ndarray) -> None:
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))


def test_exif_orientation_is_honoured(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to display) gives
    the same result as the upright image."""
    upright = Image.open(CAT).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    upright_path = tmp_path / "upright.jpg"
    upright.save(upright_path, quality=95)
    got = liteclip.preprocess(str(path))
    assert _mad(got, liteclip.preprocess(str(upright_path))) < 0.02
    # ... and clearly differs from ignoring the tag.
    assert _mad(got, _reference(path)) > 0.1


def test_all_input_kinds_agree():
    pil = Image.open(CAT)
    pixels = np.asarray(pil.convert("RGB"))
    from_path = liteclip.preprocess(str(CAT))
    np.testing.assert_array_equal(liteclip.preprocess(Path(CAT)), from_path)
    np.testing.assert_array_equal(liteclip.preprocess(CAT.read_bytes()), from_path)
    from_pixels = liteclip.preprocess(pixels)
    np.testing.assert_array_equal(liteclip.preprocess(pil), from_pixels)
    # Non-contiguous and Fortran-ordered arrays are read by their logical layout.
    np.testing.assert_array_equal(liteclip.preprocess(np.asfortranarray(pixels)), from_pixels)
    flipped = pixels[:, ::-1]
    np.testing.assert_array_equal(
        liteclip.preprocess(flipped), liteclip.preprocess(np.ascontiguousarray(flipped))
    )
    batch = liteclip.preprocess([str(CAT), pixels])
    assert batch.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], from_pixels)


def test_grey_and_rgba_arrays():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    np.testing.assert_array_equal(
        liteclip.preprocess(grey), liteclip.preprocess(np.dstack([grey] * 3))
    )
    rgba = rng.integers(0, 256, (37, 50, 4), dtype=np.uint8)
    np.testing.assert_array_equal(
        liteclip.preprocess(rgba), liteclip.preprocess(np.ascontiguousarray(rgba[..., :3]))
    )


def test_other_sizes():
    got = liteclip.preprocess(str(CAT), image_size=64)
    assert got.shape == (3, 64, 64)
    assert _mad(got, _reference(io.BytesIO(CAT.read_bytes()), 64)) <= MAD_LIMIT
