"""Numerical parity with the independent PyTorch reference (timm ConvNeXt + HF BertModel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import liteclip

import reference
from conftest import CAT, DEVICES, REAL_IMAGES

CAPTIONS = [
    "a photo of a dog",
    "a photo of a cat",
    "the photo of a human baby",
    "Two young, White males are outside near many bushes.",
    "A black dog and a spotted dog are fighting",
    "Ünïcödé café naïve — 東京 🚀",
    "",
    "word " * 300,  # longer than 128 tokens: truncated
]


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["liteclip", "liteclip-nano"])
def test_image_embeddings_match_reference(preset, device, ref_models, original_checkpoints):
    ref = ref_models[preset]
    model = liteclip.LiteClip.load(original_checkpoints[preset], device=device, config=preset)
    size = ref.image_size
    tf = reference.image_transform(size)
    pixels = torch.stack([tf(Image.open(p).convert("RGB")) for p in REAL_IMAGES])
    with torch.no_grad():
        expected = ref.encode_image(pixels).numpy()
    got = model.encode_image(pixels.numpy())
    assert got.shape == (len(REAL_IMAGES), model.embed_dim)
    assert got.dtype == np.float32
    assert _max_abs(got, expected) < 1e-4
    # Unit rows, and distinct images give distinct embeddings (the model is not degenerate).
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _max_abs(got[0], got[1]) > 1e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["liteclip", "liteclip-nano"])
def test_text_embeddings_match_reference(preset, device, ref_models, original_checkpoints):
    ref = ref_models[preset]
    model = liteclip.LiteClip.load(original_checkpoints[preset], device=device, config=preset)
    max_length = model.config["max_length"]
    with torch.no_grad():
        expected = ref.encode_text(reference.tokenize(CAPTIONS, max_length=max_length)).numpy()
    got = model.encode_text(CAPTIONS)
    assert got.shape == (len(CAPTIONS), model.embed_dim)
    assert _max_abs(got, expected) < 1e-4
    assert _max_abs(got[0], got[1]) > 1e-3
    # A single string is a batch of one.
    assert _max_abs(model.encode_text(CAPTIONS[1]), expected[1:2]) < 1e-4


def test_every_block_matters(ref_models, liteclip_ckpt):
    """The perturbation makes the parity test sensitive: dropping the last ConvNeXt block or the
    last BERT layer of the reference changes its output by far more than the tolerance."""
    ref = ref_models["liteclip"]
    pixels = reference.image_transform()(Image.open(CAT).convert("RGB")).unsqueeze(0)
    tokens = reference.tokenize(CAPTIONS[:3])
    with torch.no_grad():
        full_img, full_txt = ref.encode_image(pixels), ref.encode_text(tokens)
        block = ref.image_encoder.backbone.stages[3].blocks[2]
        gamma = block.gamma.clone()
        block.gamma.zero_()
        cut_img = ref.encode_image(pixels)
        block.gamma.copy_(gamma)
        layers = ref.text_encoder.backbone.encoder.layer
        last = layers[-1]
        ref.text_encoder.backbone.encoder.layer = layers[:-1]
        cut_txt = ref.encode_text(tokens)
        ref.text_encoder.backbone.encoder.layer = layers
        assert last is layers[-1]
    assert _max_abs(full_img, cut_img) > 1e-3
    assert _max_abs(full_txt, cut_txt) > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_predict_matches_reference_pipeline(device, ref_models, liteclip_ckpt):
    labels = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]
    expected = reference.predict(ref_models["liteclip"], CAT, labels)
    got = liteclip.ZeroShotPipeline(liteclip_ckpt, device=device).predict(str(CAT), labels)
    assert [label for label, _ in got] == [label for label, _ in expected]
    for (_, p), (_, q) in zip(got, expected):
        assert abs(p - q) < 0.005
    assert abs(sum(p for _, p in got) - 1.0) < 1e-5


def test_logit_scale_is_exponentiated(ref_models, liteclip_ckpt):
    model = liteclip.LiteClip.load(liteclip_ckpt, device="cpu")
    assert model.logit_scale == pytest.approx(ref_models["liteclip"].logit_scale.exp().item())
