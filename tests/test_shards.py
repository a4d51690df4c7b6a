"""WebDataset shards written from a captioned data set, read back with Python's own `tarfile`
(not liteclip's reader) against the source files and captions.txt read with `csv`."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tarfile
from collections import defaultdict

import pytest

import liteclip
from liteclip import datasets


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return datasets.make_shapes(tmp_path_factory.mktemp("shapes"), n_images=23, image_size=32)


def source_captions(root):
    captions = defaultdict(list)
    with open(root / "captions.txt", newline="") as f:
        for row in csv.DictReader(f):
            captions[row["image"]].append(row["caption"])
    return captions


def read_tar(path):
    samples = defaultdict(dict)
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, ext = member.name.split(".", 1)
            samples[key][ext] = archive.extractfile(member).read()
    return samples


def test_shards_hold_every_image_once_with_its_captions(shapes, tmp_path):
    paths = datasets.write_shards(shapes, tmp_path / "out", samples_per_shard=7)
    assert [p.name for p in paths] == [f"{i:05d}.tar" for i in range(math.ceil(23 / 7))]
    captions = source_captions(shapes)
    seen = set()
    for path in paths:
        samples = read_tar(path)
        assert len(samples) <= 7
        for key, members in samples.items():
            assert set(members) == {"png", "txt", "json"}, key
            meta = json.loads(members["json"])
            source = meta["source"]
            name = source.rsplit("/", 1)[-1]
            assert members["png"] == (shapes / "Images" / name).read_bytes()
            assert meta["captions"] == captions[name]
            assert members["txt"].decode() == captions[name][0]
            seen.add(name)
    assert seen == set(captions) and len(seen) == 23


def test_shard_cli_and_bad_arguments(shapes, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "liteclip", "shard", str(shapes), str(tmp_path / "s")]
        + ["--samples-per-shard", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote 3 shards: {tmp_path / 's'}/{{00000..00002}}.tar"
    assert sum(len(read_tar(p)) for p in (tmp_path / "s").glob("*.tar")) == 23
    with pytest.raises(ValueError, match="samples_per_shard"):
        datasets.write_shards(shapes, tmp_path / "x", samples_per_shard=0)
    with pytest.raises(FileNotFoundError):
        datasets.write_shards(tmp_path / "nope", tmp_path / "y")
    assert liteclip.datasets.write_shards is datasets.write_shards
