"""Locked towers (LiT): locked weights never move, hold no optimizer state, and a resumed locked
run ends as an unbroken one."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

import liteclip
from liteclip import datasets


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("shapes"), n_images=96, image_size=32)


def run(data, out, start, epochs=1, **options):
    defaults = dict(
        model="liteclip-nano",
        init=start,
        epochs=epochs,
        batch_size=16,
        lr=1e-3,
        schedule="constant",
        weight_decay=0.1,
        optimizer="adamw",
        val_fraction=0.0,
        max_steps_per_epoch=3,
        device="cpu",
        progress=False,
    )
    return liteclip.train(data, out, **{**defaults, **options})


def weights(folder):
    return liteclip.LiteClip.load(folder, device="cpu").state_dict()


def locked_by(name: str) -> bool:
    """What lock_image=True, lock_text=True, lock_text_unlocked_layers=1 lock in liteclip-nano
    (two BERT layers): the whole image backbone, the text embeddings, pooler and first layer."""
    if name.startswith("image_encoder.backbone."):
        return True
    if name.startswith("text_encoder.backbone."):
        return not name.startswith("text_encoder.backbone.encoder.layer.1.")
    return False


LOCKS = dict(lock_image=True, lock_text=True, lock_text_unlocked_layers=1)


def test_locked_weights_stay_bit_identical_and_hold_no_optimizer_state(
    shapes, checkpoint, tmp_path
):
    before = weights(checkpoint)
    result = run(shapes, tmp_path / "run", checkpoint, **LOCKS)
    after = weights(result.last_checkpoint)
    assert any(locked_by(k) for k in before) and not all(locked_by(k) for k in before)
    for name in before:
        if locked_by(name):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # What is not locked trains: the heads, the temperature, the last text layer.
    for prefix in (
        "img_projection.",
        "txt_projection.",
        "logit_scale",
        "text_encoder.backbone.encoder.layer.1.",
    ):
        assert any(
            not np.array_equal(after[k], before[k]) for k in before if k.startswith(prefix)
        ), prefix
    # Adam's moments cover exactly the weights that train (and so does weight decay).
    state = load_file(str(tmp_path / "run" / "last" / "optimizer.safetensors"))
    trainable = sum(v.size for k, v in before.items() if not locked_by(k))
    assert state["exp_avg"].size == state["exp_avg_sq"].size == trainable


def test_partly_unlocked_image_tower_trains_its_last_stages(shapes, checkpoint, tmp_path):
    before = weights(checkpoint)
    result = run(
        shapes, tmp_path / "run", checkpoint, lock_image=True, lock_image_unlocked_stages=1
    )
    after = weights(result.last_checkpoint)
    last_stage = "image_encoder.backbone.stages.3."
    for name in before:
        moved = not np.array_equal(after[name], before[name])
        if name.startswith("image_encoder.backbone."):
            trains = name.startswith(last_stage) or name.startswith("image_encoder.backbone.head.")
            if not trains:
                assert not moved, name
    assert any(not np.array_equal(after[k], before[k]) for k in before if k.startswith(last_stage))


def test_resumed_locked_run_ends_as_an_unbroken_one(shapes, checkpoint, tmp_path):
    run(shapes, tmp_path / "a", checkpoint, epochs=2, **LOCKS)
    run(shapes, tmp_path / "b", checkpoint, epochs=1, **LOCKS)
    run(shapes, tmp_path / "b", checkpoint, epochs=2, resume=True, **LOCKS)
    a, b = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The locks define the run: resuming without them is refused.
    with pytest.raises(ValueError, match="lock_image"):
        run(shapes, tmp_path / "b", checkpoint, epochs=3, resume=True)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lock_image_unlocked_stages=1), "needs lock_image"),
        (dict(lock_text_unlocked_layers=1), "needs lock_text"),
        (dict(lock_image=True, lock_image_unlocked_stages=5), "has 4 stages"),
        (dict(lock_text=True, lock_text_unlocked_layers=3), "has 2 layers"),
    ],
)
def test_bad_lock_counts_are_refused_before_training(
    shapes, checkpoint, tmp_path, options, message
):
    with pytest.raises(ValueError, match=message):
        run(shapes, tmp_path / "run", checkpoint, **options)
    assert not (tmp_path / "run" / "last").exists()


def test_a_locked_random_tower_is_worth_a_warning(shapes, tmp_path, capsys):
    liteclip.train(
        shapes,
        tmp_path / "run",
        model="liteclip-nano",
        epochs=1,
        batch_size=16,
        max_steps_per_epoch=1,
        val_fraction=0.0,
        lock_image=True,
        device="cpu",
    )
    out = capsys.readouterr()
    assert "image tower is locked but starts from random weights" in out.out + out.err
