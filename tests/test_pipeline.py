"""ZeroShotPipeline behaviour: ranking, top_k, input kinds, batches, threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liteclip

from conftest import CAT, REAL_IMAGES

LABELS = ["a photo of a dog", "a photo of a cat", "the photo of a human baby", "a rocket"]


@pytest.fixture(scope="module")
def pipe(nano_ckpt):
    return liteclip.ZeroShotPipeline(nano_ckpt, device="cpu")


def test_sorted_probabilities_that_sum_to_one(pipe):
    ranking = pipe.predict(str(CAT), LABELS)
    assert len(ranking) == len(LABELS)
    probs = [p for _, p in ranking]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert {label for label, _ in ranking} == set(LABELS)
    assert all(isinstance(label, str) and isinstance(p, float) for label, p in ranking)


def test_probabilities_are_a_softmax_of_scaled_cosines(pipe):
    model = pipe.model
    img = model.encode_image(str(CAT))
    txt = model.encode_text(LABELS)
    logits = model.logit_scale * (img @ txt.T)[0]
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    got = dict(pipe.predict(str(CAT), LABELS))
    for label, p in zip(LABELS, expected):
        assert got[label] == pytest.approx(p, abs=1e-5)


def test_top_k(pipe):
    full = pipe.predict(str(CAT), LABELS)
    assert pipe.predict(str(CAT), LABELS, top_k=2) == full[:2]
    assert pipe.predict(str(CAT), LABELS, top_k=100) == full


def test_input_kinds_agree(pipe):
    pil = Image.open(CAT)
    expected = pipe.predict(np.asarray(pil.convert("RGB")), LABELS)
    for image in [pil, pil.convert("RGBA")]:
        got = pipe.predict(image, LABELS)
        assert [lb for lb, _ in got] == [lb for lb, _ in expected]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-6)
    by_path = pipe.predict(Path(CAT), LABELS)
    assert by_path == pipe.predict(str(CAT), LABELS)
    pre = liteclip.preprocess(str(CAT), image_size=pipe.model.image_size)
    from_floats = pipe.predict(pre, LABELS)
    np.testing.assert_allclose([p for _, p in from_floats], [p for _, p in by_path], atol=1e-6)


def test_batch_of_images_gives_one_ranking_each(pipe):
    paths = [str(p) for p in REAL_IMAGES]
    batch = pipe.predict(paths, LABELS, top_k=2)
    assert len(batch) == len(paths)
    for path, ranking in zip(paths, batch):
        single = pipe.predict(path, LABELS, top_k=2)
        assert [lb for lb, _ in ranking] == [lb for lb, _ in single]
        np.testing.assert_allclose([p for _, p in ranking], [p for _, p in single], atol=1e-5)


def test_many_threads_agree_with_serial(pipe):
    paths = [str(p) for p in REAL_IMAGES] * 4
    serial = [pipe.predict(p, LABELS) for p in paths]
    results: list = [None] * len(paths)
    errors: list = []

    def work(i):
        try:
            results[i] = pipe.predict(paths[i], LABELS)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, serial):
        assert [lb for lb, _ in got] == [lb for lb, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


def test_gil_is_released_during_compute(liteclip_ckpt):
    """While one thread encodes, a pure-Python thread keeps running."""
    model = liteclip.LiteClip.load(liteclip_ckpt, device="cpu")
    images = [str(CAT)] * 8
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    start = time.perf_counter()
    model.encode_image(images)
    elapsed = time.perf_counter() - start
    done.set()
    counter.join()
    # With the GIL held the counter could not tick at all during the call.
    assert elapsed > 0.05
    assert ticks > 10, (ticks, elapsed)


def test_repr(pipe):
    assert "LiteClip(device='cpu'" in repr(pipe.model)
    assert "dims=[32, 64, 128, 256]" in repr(pipe.model)


def test_labels_may_be_any_sequence_of_str(pipe):
    expected = pipe.predict(str(CAT), LABELS)
    assert pipe.predict(str(CAT), tuple(LABELS)) == expected
    assert pipe.predict(str(CAT), np.array(LABELS)) == expected
    assert pipe.predict(str(CAT), iter(LABELS)) == expected


def test_label_sets_are_not_confused(pipe, nano_ckpt):
    """Label embeddings are cached per prompt: switching sets gives each set's own answers. (A
    prompt first embedded in another batch may differ in the last bits: padding to another
    length changes the order of the sums.)"""
    a = ["a photo of a dog", "a photo of a cat"]
    b = ["a rocket", "a cup of coffee", "a raccoon"]
    fresh_b = liteclip.ZeroShotPipeline(nano_ckpt, device="cpu").predict(str(CAT), b)
    first_a = pipe.predict(str(CAT), a)

    def assert_same(got, expected):
        assert [lb for lb, _ in got] == [lb for lb, _ in expected]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-6)

    assert_same(pipe.predict(str(CAT), b), fresh_b)
    assert pipe.predict(str(CAT), a) == first_a  # now cached: the very same numbers
    reordered = pipe.predict(str(CAT), list(reversed(a)))
    assert [lb for lb, _ in reordered] == [lb for lb, _ in first_a]
    np.testing.assert_allclose([p for _, p in reordered], [p for _, p in first_a], atol=1e-5)


def test_bf16_inference_agrees_with_fp32(nano_ckpt):
    fp32 = liteclip.ZeroShotPipeline(nano_ckpt, device="cpu")
    bf16 = liteclip.ZeroShotPipeline(nano_ckpt, device="cpu", precision="bf16")
    assert bf16.model.precision == "bf16" and fp32.model.precision == "fp32"
    a = fp32.model.encode_image([str(p) for p in REAL_IMAGES])
    b = bf16.model.encode_image([str(p) for p in REAL_IMAGES])
    assert not np.array_equal(a, b)
    assert (a * b).sum(1).min() > 0.99
    with pytest.raises(ValueError, match="precision"):
        liteclip.LiteClip.load(nano_ckpt, device="cpu", precision="int4")


def test_int8_inference_agrees_with_fp32_and_is_refused_for_training(nano_ckpt, tmp_path):
    """Dynamic int8 linear layers: close to fp32 (the error of 8-bit rounding), not equal."""
    fp32 = liteclip.LiteClip.load(nano_ckpt, device="cpu")
    int8 = liteclip.LiteClip.load(nano_ckpt, device="cpu", precision="int8")
    assert int8.precision == "int8"
    images = [str(p) for p in REAL_IMAGES]
    texts = ["a cat on a sofa", "a rocket launch at night", "a cup of coffee", "a raccoon"]
    for encode in ("encode_image", "encode_text"):
        inputs = images if encode == "encode_image" else texts
        a, b = getattr(fp32, encode)(inputs), getattr(int8, encode)(inputs)
        assert not np.array_equal(a, b), encode
        assert (a * b).sum(1).min() > 0.995, encode
    with pytest.raises(ValueError, match="int8"):
        liteclip.train(tmp_path, tmp_path / "run", precision="int8", progress=False)


def test_hypothesis_template(pipe):
    labels = ["dog", "cat", "rocket"]
    templated = pipe.predict(str(CAT), labels, hypothesis_template="a photo of a {}")
    spelled = pipe.predict(str(CAT), [f"a photo of a {x}" for x in labels])
    assert [lb for lb, _ in templated] == [lb.removeprefix("a photo of a ") for lb, _ in spelled]
    np.testing.assert_allclose([p for _, p in templated], [p for _, p in spelled], atol=1e-6)


def test_similarity_and_tensors(pipe):
    import torch

    model = pipe.model
    images = [str(p) for p in REAL_IMAGES[:3]]
    texts = ["a cat", "a rocket launch", "a cup"]
    logits = model.similarity(images, texts)
    expected = model.logit_scale * model.encode_image(images) @ model.encode_text(texts).T
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    t = model.encode_text(texts, as_tensor=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (3, 128)
    np.testing.assert_array_equal(t.numpy(), model.encode_text(texts))
    assert isinstance(model.similarity(images, texts, as_tensor=True), torch.Tensor)
