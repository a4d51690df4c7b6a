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
    got = liteclip.preprocess(str(path), decode="exact")
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
            continue  # BMP has no grey+alpha; the Rust TIFF decoder lacks it (docs: Images)
        if fmt == "TIFF" and img.mode == "P":
            continue  # palette TIFF: not supported by the Rust TIFF decoder (docs: Images)
        path = tmp_path / f"{name}.{fmt.lower()}"
        save_args = {"lossless": True} if fmt == "WEBP" else {}
        img.save(path, format=fmt, **save_args)
        got = liteclip.preprocess(str(path), decode="exact")
        mad = _mad(got, _reference(path))
        assert mad <= MAD_LIMIT, (name, fmt, mad)


def test_jpeg_grey_and_cmyk_match_torchvision(tmp_path):
    base = Image.open(CAT).convert("RGB")
    for mode in ["L", "CMYK"]:
        path = tmp_path / f"cat_{mode}.jpg"
        base.convert(mode).save(path, quality=92)
        mad = _mad(liteclip.preprocess(str(path), decode="exact"), _reference(path))
        assert mad <= MAD_LIMIT, (mode, mad)


def test_sixteen_bit_png(tmp_path):
    """16-bit RGB: PIL keeps the high byte; we scale to 8 bits (at most one level apart)."""
    rng = np.random.default_rng(3)
    hi = rng.integers(0, 256, (40, 60, 3), dtype=np.uint16)
    arr16 = (hi << 8) | hi  # 8-bit values stretched to 16 bits: both conversions agree
    path = tmp_path / "rgb16.png"
    _write_png16(path, arr16)
    expected = reference.image_transform()(Image.fromarray(hi.astype(np.uint8))).numpy()
    assert _mad(liteclip.preprocess(str(path), decode="exact"), expected) <= MAD_LIMIT


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
    got = liteclip.preprocess(str(path), decode="exact")
    assert _mad(got, liteclip.preprocess(str(upright_path), decode="exact")) < 0.02
    # ... and clearly differs from ignoring the tag.
    assert _mad(got, _reference(path)) > 0.1


def test_all_input_kinds_agree():
    pil = Image.open(CAT)
    pixels = np.asarray(pil.convert("RGB"))
    from_path = liteclip.preprocess(str(CAT), decode="exact")
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


# -- decode="fast": large JPEGs decoded at a reduced DCT scale -----------------------------------


def _camera_jpeg(path: Path, size=(2400, 1800), quality=90, seed=0, exif=None) -> Path:
    """A real photo upscaled to camera-like size, with noise, as a JPEG."""
    rng = np.random.default_rng(seed)
    img = Image.open(CAT).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 3, (size[1], size[0], 3))
    kwargs = {"exif": exif} if exif is not None else {}
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=quality, **kwargs)
    return path


def _pil_draft_reference(path: Path, scale: int, size=224) -> np.ndarray:
    """PIL's own DCT-scaled decoding (`Image.draft`, libjpeg's scaled IDCT) + the original
    transform: an independent implementation of what decode="fast" does."""
    img = Image.open(path)
    w, h = img.size
    img.draft("RGB", (-(-w // scale), -(-h // scale)))
    assert img.size == (-(-w // scale), -(-h // scale)), img.size
    return reference.image_transform(size)(img.convert("RGB")).numpy()


@pytest.mark.parametrize("size,scale", [((2400, 1800), 4), ((1800, 2400), 4), ((1000, 900), 2)])
def test_fast_decoding_matches_pils_draft_mode(tmp_path, size, scale):
    """1800 px short side: 1/4 scale keeps 450 >= 2 x 224; 900 px: only 1/2 does."""
    path = _camera_jpeg(tmp_path / "p.jpg", size=size)
    fast = liteclip.preprocess(str(path), decode="fast")
    # libjpeg's scaled IDCT on both sides, then the same resize: at most one 8-bit level apart
    # anywhere (bit-identical with the Pillow this was written against).
    one_level = 1.01 / 255 / min(reference.CLIP_STD)
    assert np.abs(fast - _pil_draft_reference(path, scale)).max() <= one_level
    # Not the exact decode (which it would equal if nothing were scaled) ...
    exact = liteclip.preprocess(str(path), decode="exact")
    assert not np.array_equal(fast, exact)
    # ... but close to it: the resize to 224 throws most of the difference away.
    assert _mad(fast, exact) < 0.01


def test_fast_decoding_leaves_small_images_and_other_formats_exact(tmp_path):
    # A 1/2 scale needs a shorter side of at least 2 x 1.5 x 224 = 672 pixels.
    small = _camera_jpeg(tmp_path / "small.jpg", size=(900, 660))
    png = tmp_path / "big.png"
    Image.open(_camera_jpeg(tmp_path / "big.jpg")).save(png)
    photos = [p for p in REAL_IMAGES if min(Image.open(p).size) < 672]
    assert len(photos) >= 4
    for path in (small, png, *photos):
        np.testing.assert_array_equal(
            liteclip.preprocess(str(path), decode="fast"),
            liteclip.preprocess(str(path), decode="exact"),
        )


def test_fast_decoding_honours_exif_orientation_and_falls_back_for_cmyk(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.open(_camera_jpeg(tmp_path / "up.jpg")).transpose(Image.Transpose.ROTATE_90)
    rotated = tmp_path / "rotated.jpg"
    stored.save(rotated, quality=95, exif=exif.tobytes())
    fast = liteclip.preprocess(str(rotated), decode="fast")
    assert _mad(fast, liteclip.preprocess(str(rotated), decode="exact")) < 0.02
    assert _mad(fast, liteclip.preprocess(str(tmp_path / "up.jpg"), decode="fast")) < 0.03
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(tmp_path / "up.jpg").convert("CMYK").save(cmyk, quality=92)
    np.testing.assert_array_equal(
        liteclip.preprocess(str(cmyk), decode="fast"),
        liteclip.preprocess(str(cmyk), decode="exact"),
    )


def test_fast_decoding_reports_broken_files_as_exact_decoding_does(tmp_path):
    data = _camera_jpeg(tmp_path / "p.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(data[:600] + bytes(range(256)) * 40 + b"\xff\xd9")
    for name in ("cut.jpg", "garbage.jpg"):
        messages = []
        for decode in ("exact", "fast"):
            with pytest.raises(liteclip.ImageDecodeError) as e:
                liteclip.preprocess(str(tmp_path / name), decode=decode)
            messages.append(str(e.value))
        assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="decode"):
        liteclip.preprocess(str(tmp_path / "p.jpg"), decode="quick")


def test_decode_mode_reaches_every_entry_point(tmp_path):
    """The model, the pipeline and encode_image all decode as they are told."""
    big = str(_camera_jpeg(tmp_path / "big.jpg"))
    exact = liteclip.LiteClip("liteclip-nano", device="cpu", seed=0)
    fast = liteclip.LiteClip("liteclip-nano", device="cpu", seed=0, decode="fast")
    assert (exact.decode, fast.decode) == ("exact", "fast")
    e, f = exact.encode_image(big), fast.encode_image(big)
    # nano takes 64 px: 1/8 scale keeps 225 >= 128 rows; the embeddings differ, slightly.
    assert not np.array_equal(e, f) and float((e * f).sum()) > 0.999
    np.testing.assert_array_equal(
        fast.encode_image(liteclip.preprocess(big, image_size=64, decode="fast")), f
    )
    saved = tmp_path / "nano"
    exact.save(saved)
    assert liteclip.ZeroShotPipeline(saved, device="cpu").model.decode == "exact"
    pipe = liteclip.ZeroShotPipeline(saved, device="cpu", decode="fast")
    assert pipe.model.decode == "fast"
    np.testing.assert_array_equal(pipe.model.encode_image(big), f)
    with pytest.raises(ValueError, match="decode"):
        liteclip.LiteClip.load(saved, decode="draft")


def test_every_entry_point_has_the_same_decode_default():
    """One default everywhere (the Python signatures, the CLI, the server's options): "exact",
    because decode="fast" missed the bar for becoming the default (BENCHMARKS.md)."""
    import inspect

    from liteclip import cli
    from liteclip.serve.options import ServeOptions

    functions = [
        liteclip.LiteClip,
        liteclip.LiteClip.load,
        liteclip.ZeroShotPipeline,
        liteclip.Index.build,
        liteclip.Index.create,
        liteclip.Index.open,
        liteclip.preprocess,
        liteclip.train,
        liteclip.evaluate,
    ]
    for function in functions:
        default = inspect.signature(function).parameters["decode"].default
        assert default == "exact", function
    assert ServeOptions().decode == "exact"
    commands = (
        ["predict", "x.jpg", "a"],
        ["embed", "x.jpg", "--checkpoint", "c"],
        ["evaluate", "c"],
    )
    for command in commands:
        assert cli._parser().parse_args(command).decode == "exact", command


def test_a_model_takes_only_its_own_input_size():
    """A 224-pixel array given to a 64-pixel model would be embedded as something else
    entirely; it is refused naming both sizes, and the model's own preprocess makes the right
    input."""
    nano = liteclip.LiteClip("liteclip-nano", device="cpu", seed=0, decode="fast")
    assert nano.image_size != 224
    with pytest.raises(ValueError, match=rf"\(N, 3, {nano.image_size}, {nano.image_size}\).*224"):
        nano.encode_image(liteclip.preprocess(str(CAT)))
    with pytest.raises(ValueError, match="224"):
        nano.encode_image(liteclip.preprocess([str(CAT), str(CAT)]))
    own = nano.preprocess(str(CAT))
    assert own.shape == (3, nano.image_size, nano.image_size)
    # The same input as the free function at the model's size and decoding.
    np.testing.assert_array_equal(
        own, liteclip.preprocess(str(CAT), image_size=nano.image_size, decode="fast")
    )
    np.testing.assert_allclose(nano.encode_image(own), nano.encode_image(str(CAT)), atol=1e-6)
    assert nano.preprocess([str(CAT)] * 3).shape == (3, 3, nano.image_size, nano.image_size)
