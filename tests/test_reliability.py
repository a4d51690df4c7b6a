"""Faults during training, interruption, and long-running use: nothing lost, nothing hung."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import liteclip
from liteclip import datasets

from conftest import CAT

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("d") / "data", n_images=48, image_size=32)


TRAIN = dict(
    model="liteclip-nano",
    epochs=4,
    batch_size=8,
    lr=1e-3,
    device="cpu",
    val_fraction=0.25,
    early_stopping_patience=None,
    max_steps_per_epoch=3,
    progress=False,
)


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(small_data, tmp_path):
    out = tmp_path / "run"
    liteclip.train(small_data, out, **{**TRAIN, "epochs": 1})
    before = liteclip.LiteClip.load(out / "last", device="cpu").state_dict()
    with pytest.raises(liteclip.NonFiniteLossError, match="loss became") as info:
        liteclip.train(small_data, out, **{**TRAIN, "epochs": 3, "lr": 1e6}, resume=True)
    assert str(out / "last") in str(info.value)
    after = liteclip.LiteClip.load(out / "last", device="cpu").state_dict()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_nonfinite_batches_can_be_skipped_and_counted(small_data, tmp_path):
    result = liteclip.train(
        small_data, tmp_path / "run", **{**TRAIN, "epochs": 1, "lr": 1e6}, skip_nonfinite=True
    )
    assert result.history[0]["nonfinite_skipped"] >= 1
    state = liteclip.LiteClip.load(result.last_checkpoint, device="cpu").state_dict()
    assert all(np.isfinite(v).all() for v in state.values())


def test_unwritable_output_fails_before_training(small_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        liteclip.train(small_data, blocker / "run", **TRAIN)
    assert "a-file" in str(info.value)
    assert time.perf_counter() - start < 10


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_unbroken_run(small_data, tmp_path):
    """Kill the training process (SIGKILL) again and again, mid-checkpoint included; after
    every kill the last completed checkpoint loads, and resuming ends with the same weights."""
    unbroken = liteclip.train(small_data, tmp_path / "unbroken", **TRAIN)
    assert len(unbroken.history) == 4

    out = tmp_path / "broken"
    code = f"""
        import liteclip
        liteclip.train({str(small_data)!r}, {str(out)!r}, resume=True, **{TRAIN!r})
        print("finished")
    """
    rng = random.Random(1)
    kills = 0
    for _ in range(12):
        proc = python(code)
        try:
            proc.wait(timeout=rng.uniform(1.0, 6.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            last = out / "last"
            if last.exists() or (out / "last.old").exists():
                folder = last if last.exists() else out / "last.old"
                liteclip.LiteClip.load(folder, device="cpu")  # always loadable
            continue
        assert proc.returncode == 0, proc.stderr.read()
        break
    else:
        pytest.fail("the resumed run never finished")
    assert kills >= 1
    a = liteclip.LiteClip.load(tmp_path / "unbroken" / "last", device="cpu").state_dict()
    b = liteclip.LiteClip.load(out / "last", device="cpu").state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_stops_training_promptly_and_cleanly(small_data, tmp_path):
    out = tmp_path / "run"
    code = f"""
        import liteclip
        liteclip.train({str(small_data)!r}, {str(out)!r},
                       **{{**{TRAIN!r}, "epochs": 1000, "max_steps_per_epoch": 2}})
    """
    proc = python(code)
    deadline = time.time() + 120
    while not (out / "last").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "last").exists(), proc.stderr.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGINT)
    start = time.time()
    proc.wait(timeout=30)
    assert time.time() - start < 10
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in proc.stderr.read()
    liteclip.LiteClip.load(out / "last", device="cpu")


@pytest.mark.slow
def test_memory_stays_flat_over_5000_predicts(nano_ckpt):
    code = f"""
        import liteclip
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        pipe = liteclip.ZeroShotPipeline({str(nano_ckpt)!r}, device="cpu")
        labels = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]
        for _ in range(500):
            pipe.predict({str(CAT)!r}, labels)
        warm = rss()
        for _ in range(4500):
            pipe.predict({str(CAT)!r}, labels)
        print(warm, rss())
    """
    proc = python(code)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    warm, end = map(float, out.split())
    assert end - warm < 20, (warm, end)


LONG_CALLS = {
    "encode_image": "model.encode_image(images)",
    "encode_text": "model.encode_text(['a photo of a cat on a mat'] * 1_000_000)",
    "similarity": "model.similarity(images, ['a cat', 'a dog'])",
    "predict": "liteclip.ZeroShotPipeline(model).predict(images, ['a cat', 'a dog'])",
}


@pytest.mark.slow
@pytest.mark.parametrize("call", sorted(LONG_CALLS))
def test_ctrl_c_stops_long_batch_work_promptly(nano_ckpt, call):
    """The core polls for Ctrl-C between chunks, whichever door the work came through."""
    code = f"""
        import liteclip
        model = liteclip.LiteClip.load({str(nano_ckpt)!r}, device="cpu")
        images = [{str(CAT)!r}] * 20000
        print("ready", flush=True)
        {LONG_CALLS[call]}
        print("finished", flush=True)
    """
    proc = python(code)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    start = time.time()
    proc.wait(timeout=60)
    assert time.time() - start < 10
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert "finished" not in proc.stdout.read()
