"""Hugging Face Hub ids, offline: a Hub cache laid out here in huggingface_hub's own layout
(`models--owner--name/{refs,snapshots,blobs}`) holds random-init weight files made by timm's
and transformers' classes; `HF_HUB_OFFLINE=1` forbids any download. Also the default learning
rate (by how the towers start) and `push_to_hub` against a stand-in for the Hub's API."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import liteclip

import reference

pytest.importorskip("huggingface_hub", reason="the hub extra is not installed")

IMAGE_REPO = "timm/convnext_test.tiny_random"
TEXT_REPO = "google/bert_test_L-2_H-128"
MODEL_REPO = "someone/liteclip-nano-test"


def cache_repo(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """One repository in the Hub cache's layout: blobs by hash, a snapshot of symlinks, and
    `refs/main` naming that snapshot."""
    owner, name = repo.split("/")
    root = cache / f"models--{owner}--{name}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for filename, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A cache with a timm-layout ConvNeXt, a transformers BERT and a liteclip model."""
    from safetensors.torch import save

    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    torch.manual_seed(5)
    image = reference.ImageEncoder((1, 1, 2, 1), (32, 64, 128, 256)).backbone
    timm_sd = {k: v.contiguous() for k, v in image.state_dict().items()}
    cache_repo(cache, IMAGE_REPO, {"model.safetensors": save(timm_sd), "config.json": b"{}"})
    text = reference.TextEncoder(128, 2, 2, 512, 128).backbone
    text.save_pretrained(tmp / "bert")
    cache_repo(cache, TEXT_REPO, folder_files(tmp / "bert"))
    liteclip.LiteClip("liteclip-nano", device="cpu", seed=1).save(tmp / "model")
    cache_repo(cache, MODEL_REPO, folder_files(tmp / "model"))
    np.savez(tmp / "expected.npz", **{f"image.{k}": v.numpy() for k, v in timm_sd.items()})
    np.savez(tmp / "text.npz", **{k: v.numpy() for k, v in text.state_dict().items()})
    return tmp


def run_offline(hub_cache: Path, script: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache / "cache"),
        "HF_HOME": str(hub_cache / "home"),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_hub_ids_start_the_towers_and_load_models_offline(hub_cache, shapes_data):
    script = f"""
        import numpy as np, liteclip
        from pathlib import Path
        hub = Path({str(hub_cache)!r})
        result = liteclip.train(
            {str(shapes_data)!r}, hub / "run", model="liteclip-nano", epochs=1,
            max_steps_per_epoch=1, lr=1e-12, batch_size=8, device="cpu", progress=False,
            val_fraction=0.0, image_weights="{IMAGE_REPO}", text_weights="hf-hub:{TEXT_REPO}",
        )
        sd = liteclip.LiteClip.load(result.last_checkpoint, device="cpu").state_dict()
        image = np.load(hub / "expected.npz")
        for key in image.files:
            if not key.startswith("image.head.fc"):
                name = "image_encoder.backbone." + key[len("image."):]
                np.testing.assert_allclose(sd[name], image[key], atol=1e-6, err_msg=key)
        text = np.load(hub / "text.npz")
        for key in text.files:
            if "position_ids" not in key:
                name = "text_encoder.backbone." + key
                np.testing.assert_allclose(sd[name], text[key], atol=1e-6, err_msg=key)
        model = liteclip.LiteClip.load("hf-hub:{MODEL_REPO}", device="cpu")
        local = liteclip.LiteClip.load(hub / "model", device="cpu")
        for key, value in local.state_dict().items():
            np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
        pipe = liteclip.ZeroShotPipeline("hf-hub:{MODEL_REPO}", device="cpu")
        assert len(pipe.predict(np.zeros((32, 32, 3), np.uint8), ["a", "b"])) == 2
        # Every entry point that takes a checkpoint takes a Hub id: evaluation and the index.
        from_hub = liteclip.evaluate("hf-hub:{MODEL_REPO}", {str(shapes_data)!r}, device="cpu")
        from_disk = liteclip.evaluate(hub / "model", {str(shapes_data)!r}, device="cpu")
        assert from_hub["loss"] == from_disk["loss"], (from_hub, from_disk)
        photos = Path({str(shapes_data)!r}) / "Images"
        index = liteclip.Index.build(photos, hub / "lib.lcx", "hf-hub:{MODEL_REPO}", device="cpu")
        assert len(index) > 0 and Path(index.checkpoint).is_dir()
        reopened = liteclip.Index.open(hub / "lib.lcx", "hf-hub:{MODEL_REPO}", device="cpu")
        assert reopened.search("a red circle", k=1)
        for spec, words in [
            ("hf-hub:nobody/missing", "HF_HUB_OFFLINE"),
            ("weights/not_here.pth", "no file or folder"),
        ]:
            try:
                liteclip.train({str(shapes_data)!r}, hub / "bad", image_weights=spec,
                               device="cpu", progress=False)
            except FileNotFoundError as error:
                assert words in str(error), error
            else:
                raise AssertionError(spec)
        print("ok")
    """
    done = run_offline(hub_cache, script)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-4000:]


def test_default_lr_depends_on_how_the_towers_start(hub_cache, shapes_data, tmp_path):
    common = dict(
        model="liteclip-nano",
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=8,
        warmup_steps=0,
        schedule="constant",
        device="cpu",
        progress=False,
        val_fraction=0.0,
    )
    scratch = liteclip.train(shapes_data, tmp_path / "scratch", **common)
    assert scratch.history[0]["lr"] == pytest.approx(2e-3)
    tuned = liteclip.train(shapes_data, tmp_path / "tuned", init=hub_cache / "model", **common)
    assert tuned.history[0]["lr"] == pytest.approx(2e-4)
    given = liteclip.train(shapes_data, tmp_path / "given", lr=5e-4, **common)
    assert given.history[0]["lr"] == pytest.approx(5e-4)
    assert "2e-4" in liteclip.train.__doc__ and "2e-3" in liteclip.train.__doc__


def test_push_to_hub_uploads_config_weights_and_a_card(monkeypatch, tmp_path):
    import huggingface_hub

    uploaded = tmp_path / "uploaded"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, commit_message))
            uploaded.mkdir()
            for p in Path(folder_path).iterdir():
                (uploaded / p.name).write_bytes(p.read_bytes())
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = liteclip.LiteClip("liteclip-nano", device="cpu", seed=2)
    url = model.push_to_hub("me/my-clip", private=True, token="t0k")
    assert url == "https://hub/me/my-clip/commit/1"
    assert ("create", "me/my-clip", True, True) in calls and ("token", "t0k") in calls
    assert sorted(p.name for p in uploaded.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    card = (uploaded / "README.md").read_text()
    assert "hf-hub:me/my-clip" in card and "library_name: liteclip" in card
    again = liteclip.LiteClip.load(uploaded, device="cpu").state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return liteclip.datasets.make_shapes(
        tmp_path_factory.mktemp("shapes"), n_images=64, seed=0, image_size=48
    )
