"""Training through the Python API: learning, resumption, bad data, backbones, export."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import liteclip
from liteclip import datasets

import reference


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    train = datasets.make_shapes(root / "train", n_images=800, seed=0, image_size=48)
    test = datasets.make_shapes(
        root / "test", n_images=192, seed=1, image_size=48, layout="folders"
    )
    return train, test


@pytest.mark.slow  # the default training run (about 3 minutes, shared)
def test_loss_falls_and_the_model_learns(trained_by_default, shapes_2000):
    result, out = trained_by_default
    history = result.history
    # Chance level of the contrastive loss is ln(batch size).
    assert history[0]["train_loss"] < math.log(64) + 0.5
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 1.0
    assert history[-1]["val_loss"] < history[0]["val_loss"]

    val = liteclip.evaluate(result.best_checkpoint, split="val")
    n_val = val["images"]
    assert n_val == result.val_images == 400
    # A random ranking puts one of an image's 5 captions first with probability ~1/n_val.
    assert val["i2t_r1"] > 8 / n_val
    assert val["i2t_r10"] > val["i2t_r1"]

    _, test_dir = shapes_2000
    zs = liteclip.evaluate(result.best_checkpoint, test_dir, task="zero-shot")
    assert len(zs["classes"]) == 24
    assert zs["top5"] >= zs["top1"] > 4 / 24
    assert np.array(zs["confusion"]).sum() == zs["images"] == 240

    lines = (out / "metrics.jsonl").read_text().strip().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [h["epoch"] for h in history]


@pytest.mark.slow  # the default training run (about 3 minutes, shared)
def test_checkpoint_works_in_the_pipeline(trained_by_default, shapes_2000):
    result, _ = trained_by_default
    _, test_dir = shapes_2000
    pipe = liteclip.ZeroShotPipeline(result.best_checkpoint, device="cpu")
    image = next((test_dir / "red circle").iterdir())
    labels = [
        "a drawing of a red circle",
        "a drawing of a blue square",
        "a drawing of a green cross",
    ]
    ranking = pipe.predict(str(image), labels)
    assert len(ranking) == 3 and abs(sum(p for _, p in ranking) - 1) < 1e-5
    assert ranking[0][0] == "a drawing of a red circle"


def test_resume_continues_exactly(shapes, tmp_path):
    train_dir, _ = shapes
    common = dict(
        model="liteclip-nano",
        batch_size=16,
        lr=1e-3,
        # Constant, so that one epoch resumed for a second is the unbroken run's first half.
        schedule="constant",
        device="cpu",
        progress=False,
        val_fraction=0.1,
        early_stopping_patience=None,
        max_steps_per_epoch=3,
    )
    liteclip.train(train_dir, tmp_path / "a", epochs=2, **common)
    liteclip.train(train_dir, tmp_path / "b", epochs=1, **common)
    with pytest.raises(ValueError, match="resume"):
        liteclip.train(train_dir, tmp_path / "b", epochs=2, **common)
    resumed = liteclip.train(train_dir, tmp_path / "b", epochs=2, resume=True, **common)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a = liteclip.LiteClip.load(tmp_path / "a" / "last", device="cpu").state_dict()
    b = liteclip.LiteClip.load(tmp_path / "b" / "last", device="cpu").state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_refuses_options_that_define_the_run(shapes, tmp_path):
    """A resume with another model, data set, split or starting point would continue something
    else than the run in `output`: refused, naming the option and both values. Options that
    may change (epochs, lr, patience, ...) do."""
    train_dir, test_dir = shapes
    other_data = datasets.make_shapes(tmp_path / "other", n_images=40, image_size=48)
    common = dict(
        model="liteclip-nano",
        batch_size=16,
        device="cpu",
        progress=False,
        max_steps_per_epoch=2,
    )
    liteclip.train(train_dir, tmp_path / "run", epochs=1, **common)
    refused = {
        "model": dict(model="liteclip"),
        "data": dict(data=other_data),
        "val_fraction": dict(val_fraction=0.1),
        "seed": dict(seed=5),
        "init": dict(init=tmp_path / "run" / "last"),
        "lock_text": dict(lock_text=True),
    }
    for option, change in refused.items():
        options = {**common, "data": train_dir, "epochs": 2, "resume": True, **change}
        with pytest.raises(ValueError, match=f"{option} was .* when it started") as info:
            liteclip.train(output=tmp_path / "run", **options)
        assert "another output folder" in str(info.value)
    # Paths are compared as absolute ones; epochs, lr and patience may change.
    resumed = liteclip.train(
        train_dir.resolve(),
        tmp_path / "run",
        epochs=2,
        lr=5e-4,
        early_stopping_patience=None,
        resume=True,
        **common,
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_accum_steps_trains_on_the_whole_contrastive_batch(shapes, tmp_path):
    """batch_size=8 with accum_steps=4 is one step on a contrastive batch of 32: the loss is that
    batch's (more than a batch of 8 has: 31 negatives per row, not 7), and the update equals
    that of batch_size=32 (dropout off, so that the two draw nothing)."""
    train_dir, _ = shapes
    config = liteclip.LiteClip("liteclip-nano", device="cpu").config
    config["head_dropout"] = 0.0
    config["text"].update(hidden_dropout=0.0, attention_dropout=0.0)
    (tmp_path / "nano.json").write_text(json.dumps(config))
    start = tmp_path / "start"
    liteclip.LiteClip(str(tmp_path / "nano.json"), device="cpu", seed=3).save(start)
    lr = 1e-3
    common = dict(
        model=str(tmp_path / "nano.json"),
        init=start,
        epochs=1,
        lr=lr,
        device="cpu",
        progress=False,
        val_fraction=0.0,
        early_stopping_patience=None,
        max_steps_per_epoch=1,
    )
    big = liteclip.train(train_dir, tmp_path / "big", batch_size=32, **common)
    cached = liteclip.train(train_dir, tmp_path / "cached", batch_size=8, accum_steps=4, **common)
    small = liteclip.train(train_dir, tmp_path / "small", batch_size=8, **common)
    loss = [r.history[0]["train_loss"] for r in (big, cached, small)]
    assert abs(loss[0] - loss[1]) < 1e-4, loss
    # 32 candidates per row against 8: about ln 32 - ln 8 = 1.4 more loss at initialisation.
    assert loss[0] - loss[2] > 0.7 * (math.log(32) - math.log(8)), loss
    weights = {}
    for name in ("start", "big/last", "cached/last", "small/last"):
        weights[name] = liteclip.LiteClip.load(tmp_path / name, device="cpu").state_dict()
    moved_small = 0.0
    for key, w0 in weights["start"].items():
        d_big = weights["big/last"][key] - w0
        d_cached = weights["cached/last"][key] - w0
        # Adam's first step is about lr * sign(gradient): equal gradients, equal steps (up to
        # entries whose gradient is within rounding of zero).
        assert np.mean(np.abs(d_big - d_cached) > 0.1 * lr) < 1e-3, key
        moved_small += np.abs(weights["small/last"][key] - w0 - d_big).sum()
    assert moved_small > 0, "a batch of 8 should not step like one of 32"
    with pytest.raises(ValueError, match="accum_steps"):
        liteclip.train(train_dir, tmp_path / "bad", batch_size=8, accum_steps=0, **common)


@pytest.mark.slow  # a SIGKILL loop: half a minute per layout
@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_sigkill_inside_an_epoch_then_resume_ends_as_an_unbroken_run(shapes, tmp_path, layout):
    """checkpoint_every saves last/ inside the epoch; a run killed there and resumed ends with the
    weights and epoch records of a run never stopped (augmentation and dropout on). Shards: the
    streams continue from their recorded positions (two workers, small shuffle blocks)."""
    train_dir, _ = shapes
    if layout == "shards":
        datasets.write_shards(train_dir, tmp_path / "shards", samples_per_shard=90)
        train_dir = f"{tmp_path}/shards/*.tar"
    common = dict(
        workers=2,
        shuffle_buffer=50,
        model="liteclip-nano",
        epochs=2,
        batch_size=16,
        lr=1e-3,
        val_fraction=0.1,
        early_stopping_patience=None,
        max_steps_per_epoch=60,
        checkpoint_every=3,
        augment=True,
        device="cpu",
    )
    unbroken = liteclip.train(train_dir, tmp_path / "a", progress=False, **common)
    run = tmp_path / "b"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, liteclip, json; "
            "liteclip.train(sys.argv[1], sys.argv[2], progress=False, **json.loads(sys.argv[3]))",
            str(train_dir),
            str(run),
            json.dumps(common),
        ]
    )
    state_file = run / "last" / "train_state.json"

    def position():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            return None
        partial = state.get("partial_epoch")
        return state["epochs_completed"], partial and partial["steps_done"]

    deadline = time.monotonic() + 300
    while position() is None or position()[0] < 1 or not (position()[1] or 0) >= 9:
        assert child.poll() is None, "the run ended before it could be killed inside epoch 2"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = position()
    assert killed_at[0] == 1 and 9 <= killed_at[1] < 60, killed_at
    resumed = liteclip.train(train_dir, run, progress=False, resume=True, **common)
    for a, b in zip(unbroken.history, resumed.history):
        for key in ("epoch", "step", "train_loss", "val_loss", "lr", "logit_scale"):
            assert a[key] == b[key], (key, a[key], b[key])
    a = liteclip.LiteClip.load(tmp_path / "a" / "last", device="cpu").state_dict()
    b = liteclip.LiteClip.load(run / "last", device="cpu").state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with pytest.raises(ValueError, match="checkpoint_every"):
        liteclip.train(train_dir, tmp_path / "c", **{**common, "checkpoint_every": 0})


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_zero_shot_accuracy_each_epoch_can_pick_best(shapes, tmp_path):
    """zero_shot_data is classified at every epoch's end; with monitor="zero_shot_top1" best/
    is the epoch with the highest accuracy, which evaluate() then measures again."""
    train_dir, test_dir = shapes
    template = "a photo of a {}"
    result = liteclip.train(
        train_dir,
        tmp_path / "run",
        model="liteclip-nano",
        epochs=3,
        batch_size=32,
        lr=2e-3,
        device="cpu",
        progress=False,
        val_fraction=0.0,
        early_stopping_patience=None,
        max_steps_per_epoch=15,
        zero_shot_data=test_dir,
        zero_shot_templates=template,
        monitor="zero_shot_top1",
    )
    top1 = [h["zero_shot_top1"] for h in result.history]
    assert len(top1) == 3 and all(0 <= t <= 1 for t in top1)
    assert all(h["zero_shot_top5"] >= h["zero_shot_top1"] for h in result.history)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["zero_shot_top1"] for line in lines] == top1
    again = liteclip.evaluate(
        result.best_checkpoint, test_dir, task="zero-shot", templates=template, device="cpu"
    )
    assert again["top1"] == pytest.approx(max(top1), abs=1e-9)
    with pytest.raises(ValueError, match="zero_shot_data"):
        liteclip.train(train_dir, tmp_path / "bad", monitor="zero_shot_top1", device="cpu")
    with pytest.raises(FileNotFoundError):
        liteclip.train(train_dir, tmp_path / "bad", zero_shot_data=tmp_path / "nope")


def test_val_data_is_a_separate_validation_set(shapes, tmp_path):
    train_dir, _ = shapes
    val_dir = datasets.make_shapes(tmp_path / "val", n_images=40, seed=7, image_size=48)
    result = liteclip.train(
        train_dir,
        tmp_path / "run",
        model="liteclip-nano",
        epochs=1,
        batch_size=32,
        max_steps_per_epoch=2,
        device="cpu",
        progress=False,
        val_fraction=0.5,  # not used: val_data is given
        val_data=val_dir,
    )
    assert result.val_images == 40 and result.train_images == 800
    record = result.history[0]
    again = liteclip.evaluate(result.last_checkpoint, split="val", batch_size=32, device="cpu")
    assert again["images"] == 40
    assert again["loss"] == pytest.approx(record["val_loss"], abs=1e-5)
    assert again["i2t_r1"] == pytest.approx(record["val_i2t_r1"], abs=1e-9)
    with pytest.raises(FileNotFoundError):
        liteclip.train(train_dir, tmp_path / "bad", val_data=tmp_path / "nope", device="cpu")


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    data = datasets.make_shapes(tmp_path / "data", n_images=40, seed=3, image_size=32)
    images = sorted((data / "Images").iterdir())
    for path in images[:3]:
        path.write_bytes(path.read_bytes()[:40])  # truncated
    images[3].write_text("not an image")
    for path in images[4:6]:
        path.unlink()
    result = liteclip.train(
        data,
        tmp_path / "run",
        model="liteclip-nano",
        epochs=1,
        batch_size=8,
        device="cpu",
        progress=False,
        val_fraction=0.0,
    )
    assert len(result.skipped_images) == 4
    assert {p for p, _ in result.skipped_images} == {str(p) for p in images[:4]}
    assert result.missing_images == 2 * len(datasets.TRAIN_TEMPLATES)
    assert result.train_images == 38
    assert result.history[0]["skipped_images"] == 4


def test_bad_data_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        liteclip.train(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="captions"):
        liteclip.train(tmp_path / "empty", tmp_path / "out", progress=False)
    data = datasets.make_shapes(tmp_path / "d", n_images=8, seed=0, image_size=32)
    with pytest.raises(ValueError, match="no column"):
        liteclip.train(data, tmp_path / "out", caption_column="text", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        liteclip.train(data, tmp_path / "out", batch_size=1, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        liteclip.train(data, tmp_path / "out", optimizer="sgd", progress=False)
    with pytest.raises(liteclip.ConfigError):
        liteclip.train(data, tmp_path / "out", model="liteclip-xl", progress=False)


def test_backbone_weights_load_into_the_towers(tmp_path, shapes):
    """Random-init timm and Hugging Face files, in their own layouts, start the towers."""
    from safetensors.torch import save_file

    torch.manual_seed(5)
    image = reference.ImageEncoder((1, 1, 2, 1), (32, 64, 128, 256)).backbone
    timm_sd = {k: v.clone() for k, v in image.state_dict().items()}  # includes head.fc.*
    torch.save(timm_sd, tmp_path / "convnext.pth")
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, tmp_path / "convnext.safetensors")
    text = reference.TextEncoder(128, 2, 2, 512, 128).backbone
    text.save_pretrained(tmp_path / "bert")
    # A masked-LM style file: "bert." trunk and "cls." head.
    mlm = {f"bert.{k}": v for k, v in text.state_dict().items()}
    mlm["cls.predictions.bias"] = torch.zeros(30522)
    torch.save(mlm, tmp_path / "bert_mlm.bin")

    train_dir, _ = shapes
    for i, (img_w, txt_w) in enumerate(
        [("convnext.pth", "bert"), ("convnext.safetensors", "bert_mlm.bin")]
    ):
        result = liteclip.train(
            train_dir,
            tmp_path / f"run{i}",
            model="liteclip-nano",
            epochs=1,
            max_steps_per_epoch=1,
            lr=1e-12,
            batch_size=8,
            device="cpu",
            progress=False,
            val_fraction=0.0,
            image_weights=tmp_path / img_w,
            text_weights=tmp_path / txt_w,
        )
        sd = liteclip.LiteClip.load(result.last_checkpoint, device="cpu").state_dict()
        for k, v in timm_sd.items():
            if not k.startswith("head.fc"):
                np.testing.assert_allclose(
                    sd[f"image_encoder.backbone.{k}"], v.numpy(), atol=1e-6, err_msg=k
                )
        for k, v in text.state_dict().items():
            if "position_ids" not in k:
                np.testing.assert_allclose(
                    sd[f"text_encoder.backbone.{k}"], v.numpy(), atol=1e-6, err_msg=k
                )

    # A tower file of another architecture is refused with the mismatches listed.
    with pytest.raises(liteclip.CheckpointError, match="shape mismatches"):
        liteclip.train(
            train_dir,
            tmp_path / "bad",
            model="liteclip",
            image_weights=tmp_path / "convnext.pth",
            progress=False,
            device="cpu",
        )


def test_export_pt_loads_into_the_original_module(tmp_path):
    model = liteclip.LiteClip("liteclip", device="cpu", seed=3)
    path = tmp_path / "export" / "liteclip2.pt"
    model.export_pt(path)
    ref = reference.CLIP("liteclip").eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert type(state).__name__ == "OrderedDict"
    ref.load_state_dict(state, strict=True)
    texts = ["a photo of a cat", "a dog"]
    with torch.no_grad():
        expected = ref.encode_text(reference.tokenize(texts)).numpy()
    np.testing.assert_allclose(model.encode_text(texts), expected, atol=1e-4)
    with pytest.raises(liteclip.ConfigError):
        liteclip.LiteClip("liteclip-nano", device="cpu").export_pt(tmp_path / "nano.pt")


@pytest.mark.slow  # the default training run (about 3 minutes, shared)
def test_zero_shot_template_ensemble(trained_by_default, shapes_2000):
    result, _ = trained_by_default
    _, test_dir = shapes_2000
    ensemble = liteclip.evaluate(
        result.best_checkpoint, test_dir, task="zero-shot", templates="ensemble"
    )
    assert len(ensemble["templates"]) == 18
    one = liteclip.evaluate(result.best_checkpoint, test_dir, task="zero-shot")
    assert one["templates"] == ["a photo of a {}."]
    assert ensemble["top1"] > 1 / 24
