"""Shared fixtures: reference models and their checkpoints in the original layout, test images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import reference  # noqa: E402

REAL_IMAGES = sorted((TESTS / "data" / "images").glob("*.jpg"))
CAT = TESTS / "data" / "images" / "cat_chelsea.jpg"

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
