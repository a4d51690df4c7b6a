"""Bad input gives an ordinary Python exception that names the problem; never a panic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import liteclip

from conftest import CAT

LABELS = ["a photo of a dog", "a photo of a cat"]


@pytest.fixture(scope="module")
def pipe(nano_model):
    return liteclip.ZeroShotPipeline(nano_model)


def _assert_ordinary(exc: BaseException) -> None:
    # PyO3's PanicException derives from BaseException, not Exception.
    assert isinstance(exc, Exception), type(exc)
    assert type(exc).__name__ != "PanicException"


def test_missing_image_file(pipe, tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError) as info:
        pipe.predict(str(missing), LABELS)
    assert info.value.filename == str(missing)
    assert "missing.jpg" in str(info.value)


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jpg", b""),
        ("text.jpg", b"this is a text file, not an image\n" * 10),
        ("random.png", np.random.default_rng(0).bytes(5000)),
        ("truncated.jpg", CAT.read_bytes()[:3000]),
        ("header_only.png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_undecodable_files(pipe, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(liteclip.ImageDecodeError) as info:
        pipe.predict(str(path), LABELS)
    _assert_ordinary(info.value)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value)


def test_directory_as_image(pipe, tmp_path):
    with pytest.raises(liteclip.ImageDecodeError, match="directory"):
        pipe.predict(str(tmp_path), LABELS)


def test_decompression_bomb_is_refused(pipe, tmp_path):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    old = liteclip.get_max_image_pixels()
    assert old == liteclip.DEFAULT_MAX_IMAGE_PIXELS
    try:
        liteclip.set_max_image_pixels(5_000_000)
        with pytest.raises(liteclip.ImageDecodeError, match="6000000 pixels"):
            pipe.predict(str(path), LABELS)
    finally:
        liteclip.set_max_image_pixels(old)
    assert len(pipe.predict(str(path), LABELS)) == 2
    with pytest.raises(ValueError):
        liteclip.set_max_image_pixels(0)


@pytest.mark.parametrize("labels", [[], ["only one"], "a single string"])
def test_fewer_than_two_labels(pipe, labels):
    with pytest.raises(ValueError, match="at least 2 labels"):
        pipe.predict(str(CAT), labels)


@pytest.mark.parametrize("labels", [["a cat", 3], ["a cat", None], [b"bytes", "a cat"]])
def test_non_string_label(pipe, labels):
    with pytest.raises(TypeError, match=r"labels\[\d\] must be a str"):
        pipe.predict(str(CAT), labels)


def test_labels_not_a_list(pipe):
    with pytest.raises(TypeError, match="labels"):
        pipe.predict(str(CAT), 12)


@pytest.mark.parametrize(
    "image",
    [42, None, 3.5, {"a": 1}, np.zeros((5, 5, 3), dtype=np.int32), np.zeros(7, dtype=np.uint8)],
    ids=["int", "none", "float", "dict", "int32_array", "1d_array"],
)
def test_wrong_image_types(pipe, image):
    with pytest.raises((TypeError, ValueError)) as info:
        pipe.predict(image, LABELS)
    _assert_ordinary(info.value)


def test_wrong_preprocessed_shape(nano_model):
    for shape in [(1, 4, 64, 64), (1, 3, 8, 64), (2, 3, 64)]:
        with pytest.raises(ValueError, match=r"\((N, )?3, (64, 64|S, S)\)"):
            nano_model.encode_image(np.zeros(shape, dtype=np.float32))


def test_empty_list_of_images(pipe):
    with pytest.raises(ValueError, match="empty"):
        pipe.predict([], LABELS)


def test_bad_top_k(pipe):
    with pytest.raises(ValueError, match="top_k"):
        pipe.predict(str(CAT), LABELS, top_k=0)


def test_checkpoint_errors():
    with pytest.raises(FileNotFoundError):
        liteclip.ZeroShotPipeline("no/such/checkpoint.pt")
    with pytest.raises(TypeError):
        liteclip.ZeroShotPipeline(12)


def test_default_checkpoint_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="liteclip2.pt"):
        liteclip.ZeroShotPipeline()


def test_bad_device_and_config():
    with pytest.raises(ValueError, match="unknown device"):
        liteclip.LiteClip("liteclip-nano", device="tpu")
    with pytest.raises(liteclip.ConfigError, match="unknown preset"):
        liteclip.LiteClip("liteclip-huge", device="cpu")
    if not liteclip.cuda_is_available():
        with pytest.raises(liteclip.DeviceError, match="CUDA is not available"):
            liteclip.LiteClip("liteclip-nano", device="cuda")
    else:  # int8 has CPU kernels only: refused on a GPU, not silently run in fp32
        with pytest.raises(ValueError, match="int8.*CPU"):
            liteclip.LiteClip("liteclip-nano", device="cuda", precision="int8")


def test_odd_but_valid_labels_work(pipe):
    labels = ["", "a cat", "ünïcödé 東京 🚀", "word " * 2000, "a cat"]
    ranking = pipe.predict(str(CAT), labels, top_k=10)
    assert len(ranking) == len(labels)
    assert abs(sum(p for _, p in ranking) - 1) < 1e-5
    many = [f"label {i}" for i in range(1000)]
    assert len(pipe.predict(str(CAT), many, top_k=3)) == 3


@pytest.mark.parametrize("shape", [(1, 1, 3), (30, 4000, 3), (4000, 30, 3), (7, 5)])
def test_tiny_and_extreme_images_work(pipe, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert len(pipe.predict(image, LABELS)) == 2


def test_cli_bad_input_exit_codes(tmp_path, capsys):
    from liteclip import cli

    def run(*args):
        try:
            code = cli.main(list(map(str, args)))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        return code, capsys.readouterr().err

    missing = tmp_path / "missing"
    cases = [
        (run("predict", CAT, "one label", "--checkpoint", missing), 1, "missing"),
        (run("train", tmp_path, "--optimizer", "sgd"), 2, "invalid choice"),
        (run("train", tmp_path, "--output", tmp_path / "o"), 1, "captions"),
        (run("evaluate", missing), 1, "missing"),
        (run("embed", missing, "--checkpoint", missing), 1, "missing"),
        (run("predict", CAT, "a", "b", "--top-k", "x"), 2, "invalid int"),
    ]
    for (code, stderr), expected_code, text in cases:
        assert code == expected_code, stderr
        assert text in stderr
        assert "Traceback" not in stderr


def test_a_panic_in_rust_becomes_a_liteclip_error():
    from liteclip import _liteclip

    with pytest.raises(liteclip.LiteClipError, match="internal error"):
        _liteclip._panic_for_tests()


def test_libtorch_failing_inside_a_tensor_call_is_a_torch_error_with_its_message():
    """Forwards use tch's infallible calls; when libtorch fails in one (out of memory, a CUDA
    error) the caller gets libtorch's message as TorchError, not an 'internal error'."""
    from liteclip import _liteclip

    with pytest.raises(liteclip.TorchError, match="cannot be multiplied") as info:
        _liteclip._torch_failure_for_tests()
    assert "internal error" not in str(info.value)
    assert "Exception raised from" not in str(info.value)


def test_every_exception_from_rust_goes_through_the_one_map():
    """Bindings raise only through src/python/errors.rs, so each core error has one class."""
    bindings = Path(__file__).resolve().parents[1] / "src" / "python"
    for path in bindings.glob("*.rs"):
        if path.name != "errors.rs":
            text = path.read_text()
            assert "new_err(" not in text and "PyErr::new" not in text, path.name


def test_error_classes_by_kind():
    assert issubclass(liteclip.NonFiniteLossError, liteclip.LiteClipError)
    assert issubclass(liteclip.NonFiniteLossError, FloatingPointError)
    assert issubclass(liteclip.TorchError, liteclip.LiteClipError)
    assert issubclass(liteclip.TorchError, RuntimeError)
    assert issubclass(liteclip.DistributedError, liteclip.LiteClipError)
