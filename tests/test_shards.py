"""WebDataset shards: written from a captioned data set (read back with Python's own `tarfile`,
not liteclip's reader, against the source files and captions.txt read with `csv`), and trained
on: every way of naming them, skipped members counted, epochs by pass or by sample count, a
model that learns, and memory that stays flat while 100,000 samples stream by."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import tarfile
import time
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

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


def shard_sources(folder):
    """The source image of every sample, in the order the shards hold them."""
    return [
        json.loads(members["json"])["source"].rsplit("/", 1)[-1]
        for path in sorted(folder.glob("*.tar"))
        for members in read_tar(path).values()
    ]


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_shards_are_written_in_a_seeded_shuffled_order_unless_asked_not_to(shapes, tmp_path):
    source_order = list(source_captions(shapes))
    for name, flags in [("kept", ["--no-shuffle"]), ("a", []), ("b", []), ("c", ["--seed", "1"])]:
        done = subprocess.run(
            [sys.executable, "-m", "liteclip", "shard", str(shapes), str(tmp_path / name), *flags],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    kept, a, b, c = (shard_sources(tmp_path / n) for n in ["kept", "a", "b", "c"])
    assert kept == source_order
    assert a == b and a != c and a != source_order
    assert sorted(a) == sorted(source_order)


def png_bytes(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def write_tar(path, members) -> None:
    """A tar of `(name, bytes)` members, in order, written with Python's `tarfile`."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


NANO = dict(model="liteclip-nano", device="cpu", progress=False, early_stopping_patience=None)


@pytest.fixture(scope="module")
def shard_dir(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    datasets.write_shards(shapes, out, samples_per_shard=6)  # 23 samples: 4 shards
    return out


@pytest.mark.parametrize("form", ["pattern", "glob", "list", "folder", "one file"])
def test_every_way_of_naming_shards_trains(shard_dir, tmp_path, form):
    data = {
        "pattern": f"{shard_dir}/{{00000..00003}}.tar",
        "glob": f"{shard_dir}/*.tar",
        "list": [shard_dir / "00000.tar", str(shard_dir / "00001.tar")],
        "folder": shard_dir,
        "one file": shard_dir / "00002.tar",
    }[form]
    expected = {"list": 12, "one file": 6}.get(form, 23)
    result = liteclip.train(data, tmp_path / "run", epochs=1, batch_size=4, **NANO)
    assert result.train_images == expected
    # One pass: every sample once, in batches of 4 (the last may be short).
    assert result.history[0]["step"] == math.ceil(expected / 4)
    assert result.val_images == 0 and result.history[0]["val_loss"] is None
    info = json.loads((tmp_path / "run" / "last" / "data.json").read_text())
    assert info["shards"] is True


def test_incomplete_corrupt_and_truncated_members_are_skipped_and_counted(tmp_path):
    good = [(f"{i:04d}.png", png_bytes(i)) for i in range(6)]
    captions = [(f"{i:04d}.txt", f"picture {i}".encode()) for i in range(6)]
    members = [m for pair in zip(good, captions) for m in pair]
    members += [
        ("no-caption.png", png_bytes(99)),
        ("no-image.txt", b"a caption alone"),
        ("broken.jpg", b"not a jpeg at all"),
        ("broken.txt", b"a broken picture"),
        ("json-only.webp", b"RIFF....WEBP"),  # corrupt too, captioned by its json
        ("json-only.json", json.dumps({"caption": "from the json"}).encode()),
    ]
    write_tar(tmp_path / "a.tar", members)
    write_tar(tmp_path / "b.tar", members[:8])
    data = (tmp_path / "b.tar").read_bytes()
    # Cut b.tar inside the contents of its fourth sample's image (header blocks included).
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2 + 100])
    result = liteclip.train(
        [tmp_path / "a.tar", tmp_path / "b.tar"], tmp_path / "run", epochs=1, batch_size=4, **NANO
    )
    assert result.samples_without_caption == 1 and result.samples_without_image == 1
    assert result.truncated_shards == [str(tmp_path / "b.tar")]
    skipped = sorted(path.rsplit("/", 1)[-1] for path, _ in result.skipped_images)
    assert skipped == ["broken", "json-only"]
    assert all(path.startswith(str(tmp_path / "a.tar")) for path, _ in result.skipped_images)


def test_samples_per_epoch_sizes_the_epoch_and_restarts_the_shards(shard_dir, tmp_path):
    result = liteclip.train(
        f"{shard_dir}/*.tar", tmp_path / "run", epochs=2, batch_size=4, samples_per_epoch=50, **NANO
    )
    # 50 pairs per epoch: 13 steps of 4 over 23 samples, streams starting their shards again.
    assert [h["step"] for h in result.history] == [13, 26]
    assert result.train_images == 0  # not counted: samples_per_epoch sizes the epoch


def test_bad_shard_arguments(shard_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard file matches"):
        liteclip.train(f"{tmp_path}/none/*.tar", tmp_path / "a", **NANO)
    with pytest.raises(FileNotFoundError, match="missing"):
        liteclip.train(f"{shard_dir}/{{00000..00009}}.tar", tmp_path / "b", **NANO)
    with pytest.raises(ValueError, match="shard pattern"):
        liteclip.train(f"{shard_dir}/{{00000..", tmp_path / "c", **NANO)
    write_tar(tmp_path / "empty.tar", [("x.png", png_bytes(1))])
    with pytest.raises(ValueError, match="need at least 2"):
        liteclip.train(tmp_path / "empty.tar", tmp_path / "d", **NANO)
    for option in ("workers", "shuffle_buffer", "samples_per_epoch"):
        with pytest.raises(ValueError, match=option):
            liteclip.train(shard_dir, tmp_path / "e", **{option: 0}, **NANO)
    run = liteclip.train(shard_dir, tmp_path / "f", epochs=1, batch_size=8, **NANO)
    with pytest.raises(ValueError, match="WebDataset shards"):
        liteclip.evaluate(run.last_checkpoint, split="train")


@pytest.mark.slow  # several CLI processes: the full suite runs it
def test_train_cli_takes_shard_patterns_and_lists(shard_dir, tmp_path):
    for i, data in enumerate(
        [[f"{shard_dir}/{{00000..00001}}.tar"], [str(p) for p in sorted(shard_dir.glob("*.tar"))]]
    ):
        done = subprocess.run(
            [sys.executable, "-m", "liteclip", "train", *data, "--output", str(tmp_path / str(i))]
            + ["--model", "liteclip-nano", "--epochs", "1", "--batch-size", "4", "--json"]
            + ["--workers", "1", "--shuffle-buffer", "5", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["train_images"] == [12, 23][i]


@pytest.mark.slow  # writes 100,000 samples (about 450 MB) and trains one epoch over them
def test_memory_stays_flat_while_streaming_100k_samples(tmp_path):
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            out, "JPEG", quality=95
        )
        jpegs.append(out.getvalue())
    n, per_shard = 100_000, 5_000
    for s in range(n // per_shard):
        members = []
        for i in range(s * per_shard, (s + 1) * per_shard):
            members += [(f"{i:09d}.jpg", jpegs[i % 64]), (f"{i:09d}.txt", f"photo {i}".encode())]
        write_tar(tmp_path / f"{s:05d}.tar", members)
    encoded_mib = n * np.mean([len(j) for j in jpegs]) / 2**20
    # liteclip-nano at 32 px: the model is small, so the loader's memory would show.
    config = liteclip.LiteClip("liteclip-nano", device="cpu").config
    config["image_size"] = 32
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    script = (
        "import sys, json, liteclip; "
        "r = liteclip.train(sys.argv[1], sys.argv[2], model=sys.argv[3], epochs=1, "
        "batch_size=256, device='cpu', progress=False); print(json.dumps(r.train_images))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, f"{tmp_path}/*.tar", str(tmp_path / "run")]
        + [str(tmp_path / "tiny.json")],
        stdout=subprocess.PIPE,
        text=True,
    )
    process = psutil.Process(child.pid)
    samples = []
    while child.poll() is None:
        try:
            samples.append((time.monotonic(), process.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out, _ = child.communicate()
    assert child.returncode == 0
    assert json.loads(out) == n
    # RSS wobbles by +-100 MiB from step to step (activations freed and allocated again); what
    # matters is its trend once warm: holding the samples read would add `encoded_mib` over
    # the run.
    t, rss = np.array(samples[len(samples) // 10 : -2]).T
    slope = np.polyfit(t, rss, 1)[0]
    growth = slope * (t[-1] - t[0])
    print(
        f"RSS median {np.median(rss):.0f} MiB, trend {growth:+.1f} MiB over the run "
        f"({len(rss)} readings; the samples are {encoded_mib:.0f} MiB encoded)"
    )
    assert encoded_mib > 250
    assert growth < 60, growth
