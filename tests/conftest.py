"""Shared fixtures: reference models and their checkpoints in the original layout, test images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import reference  # noqa: E402

REAL_IMAGES = sorted((TESTS / "data" / "images").glob("*.jpg"))
CAT = TESTS / "data" / "images" / "cat_chelsea.jpg"

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` small JPEG and PNG photos in nested folders, each different."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        colour = list(COLOURS.values())[i % 3]
        pixels = rng.integers(0, 60, (48, 64, 3)) + np.array(colour) * 0.7
        folder = root / f"album{i % 4}" / ("nested" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"p{i:03d}.jpg" if i % 2 else f"p{i:03d}.png")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU"))]


@pytest.fixture(scope="session")
def ref_models():
    """Perturbed reference models, built once: {"liteclip": CLIP, "liteclip-nano": CLIP}."""
    return {
        "liteclip": reference.perturbed_model("liteclip", seed=0),
        "liteclip-nano": reference.perturbed_model("liteclip-nano", seed=1),
    }


@pytest.fixture(scope="session")
def original_checkpoints(ref_models, tmp_path_factory):
    """Each reference model saved as the original release was: torch.save(state_dict)."""
    root = tmp_path_factory.mktemp("original")
    return {
        name: reference.save_original_checkpoint(model, root / name / "liteclip2.pt")
        for name, model in ref_models.items()
    }


@pytest.fixture(scope="session")
def liteclip_ckpt(original_checkpoints):
    return original_checkpoints["liteclip"]


@pytest.fixture(scope="session")
def nano_ckpt(original_checkpoints):
    return original_checkpoints["liteclip-nano"]


@pytest.fixture(scope="session")
def nano_model(nano_ckpt):
    import liteclip

    # The original .pt format stores no image size; the nano preset says 64 px.
    return liteclip.LiteClip.load(nano_ckpt, device="cpu", config="liteclip-nano")


@pytest.fixture(scope="session")
def checkpoint(nano_model, tmp_path_factory):
    """The nano model saved in liteclip's own format (a folder)."""
    path = tmp_path_factory.mktemp("ck") / "nano"
    nano_model.save(path)
    return path


@pytest.fixture(scope="session")
def shapes_2000(tmp_path_factory):
    """The built-in shapes set at the demo's size (2,000 captioned images), and 240 new images in
    class folders for zero-shot checks."""
    from liteclip import datasets

    root = tmp_path_factory.mktemp("shapes-2000")
    train = datasets.make_shapes(root / "train", n_images=2000, seed=0)
    test = datasets.make_shapes(root / "test", n_images=240, seed=1, layout="folders")
    return train, test


@pytest.fixture(scope="session")
def trained_by_default(shapes_2000, tmp_path_factory):
    """liteclip-nano trained from scratch as a user who sets nothing but data, output, model,
    epochs and batch size (10 epochs of 64: about 3 minutes on 2 cores)."""
    import liteclip

    train_dir, _ = shapes_2000
    out = tmp_path_factory.mktemp("trained-by-default") / "run"
    result = liteclip.train(train_dir, out, model="liteclip-nano", epochs=10, batch_size=64)
    return result, out
