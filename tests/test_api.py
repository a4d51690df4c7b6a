"""The public surface: names users import, their documentation, version and reprs."""

from __future__ import annotations

import inspect

import liteclip


def test_every_public_name_is_documented():
    missing = []
    for name in liteclip.__all__:
        obj = getattr(liteclip, name)
        if name.startswith("__") or isinstance(obj, (int, str)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                if not member.startswith("_") and not (getattr(value, "__doc__", "") or "").strip():
                    missing.append(f"{name}.{member}")
    assert not missing


def test_train_help_explains_every_argument():
    doc = liteclip.train.__doc__
    for param in inspect.signature(liteclip.train).parameters:
        if param not in ("image_column", "caption_column", "images_dir"):
            assert f"{param}:" in doc, param
    assert "image_column" in doc and "caption_column" in doc and "images_dir" in doc


def test_version_and_names():
    assert liteclip.__version__.count(".") == 2
    for name in ["ZeroShotPipeline", "LiteClip", "preprocess", "tokenize", "train", "evaluate"]:
        assert hasattr(liteclip, name)
    assert issubclass(liteclip.ImageDecodeError, liteclip.LiteClipError)
    assert issubclass(liteclip.CheckpointError, ValueError)
