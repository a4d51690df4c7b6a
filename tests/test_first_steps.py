"""What a person trying liteclip for the first time meets: mistakes caught before the first
training step with a message that says what to change, runs that can be evaluated from any
folder, and the project's metadata (version, licence, citation)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import liteclip
from liteclip import datasets

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(model="liteclip-nano", epochs=1, batch_size=4, device="cpu", progress=False)


@pytest.fixture(scope="module")
def five_images(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("five"), n_images=5, image_size=32)


def test_a_validation_split_too_small_is_refused_before_training(five_images, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"val_fraction=0\.2 of 5 images leaves 1") as caught:
        liteclip.train(data=five_images, output=out, **TINY)
    message = str(caught.value)
    assert "val_fraction=0" in message and "val_data=" in message
    assert not (out / "last").exists() and not (out / "metrics.jsonl").exists()
    # What the message suggests works.
    liteclip.train(data=five_images, output=out, val_fraction=0.4, **TINY)
    assert (out / "best").is_dir()


def test_a_shard_pattern_naming_missing_shards_says_what_exists(tmp_path):
    data = datasets.make_shapes(tmp_path / "data", n_images=20, image_size=32)
    shards = tmp_path / "shards"
    written = datasets.write_shards(data, shards, samples_per_shard=4)
    assert len(written) == 5
    pattern = str(shards / "{00000..00127}.tar")
    with pytest.raises(FileNotFoundError) as caught:
        liteclip.train(data=pattern, output=tmp_path / "run", **TINY)
    message = str(caught.value)
    assert "names 128 shards, of which 5 exist and 123 are missing" in message
    suggested = re.search(r'data="([^"]+)"', message).group(1)
    assert suggested == str(shards / "{00000..00004}.tar")
    result = liteclip.train(data=suggested, output=tmp_path / "run", **TINY)
    assert result.history


def test_a_run_is_evaluated_from_any_folder_and_says_when_its_data_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets.make_shapes(tmp_path / "data", n_images=12, image_size=32)
    liteclip.train(data="data", output="run", **TINY)  # relative paths, as typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    metrics = liteclip.evaluate(tmp_path / "run" / "best", split="val", device="cpu")
    assert metrics["images"] >= 2
    shutil.move(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="data="):
        liteclip.evaluate(tmp_path / "run" / "best", split="val", device="cpu")
    moved = liteclip.evaluate(
        tmp_path / "run" / "best", data=tmp_path / "moved", split="val", device="cpu"
    )
    assert moved["images"] == metrics["images"]
    # A data set given by data= is evaluated whole unless a split is asked for.
    whole = liteclip.evaluate(tmp_path / "run" / "best", data=tmp_path / "moved", device="cpu")
    assert whole["images"] == 12


def test_version_everywhere():
    done = subprocess.run(
        [sys.executable, "-m", "liteclip", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"liteclip {liteclip.__version__}"
    cargo = (ROOT / "Cargo.toml").read_text()
    assert f'version = "{liteclip.__version__}"' in cargo
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == liteclip.__version__


def test_licence_and_citation():
    licence = (ROOT / "LICENSE").read_text()
    declared = re.search(r'license = \{ text = "([^"]+)" \}', (ROOT / "pyproject.toml").read_text())
    assert declared and licence.startswith(f"{declared.group(1)} License")
    assert re.search(r'^license = "MIT"$', (ROOT / "Cargo.toml").read_text(), re.M)
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == declared.group(1)
    original = [r for r in citation["references"] if r["title"] == "liteCLIP"]
    assert original and original[0]["repository-code"] == "https://github.com/shreydan/liteCLIP"
