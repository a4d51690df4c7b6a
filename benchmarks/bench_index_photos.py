"""Indexing speed on real-looking photo folders: `liteclip.Index.build` against a PIL +
torchvision `DataLoader` loop feeding the same weights (the eager timm + transformers model).

    python benchmarks/bench_index_photos.py [--phone 16] [--flickr 128] [--batch 32]
        [--unchanged 10000] [--repeats 3] [--json F]

Two folders, generated once under runs/bench-data (nothing is downloaded): `--phone` 12-MP JPEGs
(4032x3024, the test photos upscaled with sensor-like noise, quality 90, what phones write) and
`--flickr` 500x375 JPEGs (quality 90). For each, liteclip builds a fresh index of the folder
(decode on all cores one batch ahead of the model, fp32) and the reference embeds the same files
through a DataLoader with one worker per core; they alternate, after a warm-up. `--unchanged N`
also times a re-run over an unchanged folder of N small photos (nano model), which decodes
nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    cached_jpegs,
    compare,
    print_table,
    random_crop,
    reference_model,
    saved_checkpoint,
    write_json,
)
from PIL import Image

import liteclip


def phone_folder(n: int, seed: int = 0) -> list[Path]:
    """12-MP camera-like JPEGs: a real photo upscaled, plus per-pixel noise, at quality 90."""

    def draw(i: int, rng: np.random.Generator, sources: list) -> Image.Image:
        big = sources[i % len(sources)].resize((4032, 3024), Image.Resampling.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.normal(0, 4, (3024, 4032, 3)).astype(np.int16)
        return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))

    return cached_jpegs(f"phone-{n}-{seed}", n, seed, draw, prefix="IMG_")


def flickr_folder(n: int, seed: int = 0) -> list[Path]:
    """500x375 JPEGs (Flickr8k's typical size) cut from the real photos, quality 90."""

    def draw(i: int, rng: np.random.Generator, sources: list) -> Image.Image:
        crop = random_crop(sources[i % len(sources)], rng, 0.6)
        return crop.resize((500, 375), Image.Resampling.BILINEAR)

    return cached_jpegs(f"flickr-{n}-{seed}", n, seed, draw)


class Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths
        self.tf = __import__("reference").image_transform()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def indexing_case(name, paths, ref, checkpoint, batch, repeats):
    folder = paths[0].parent
    loader = torch.utils.data.DataLoader(
        Files([str(p) for p in paths]), batch_size=batch, num_workers=os.cpu_count() or 1
    )
    work = Path(tempfile.mkdtemp())

    def ours():
        lib = work / "lib.lcx"
        shutil.rmtree(lib, ignore_errors=True)
        index = liteclip.Index.build(folder, lib, checkpoint, device="cpu", batch_size=batch)
        assert index.last_report["embedded"] == len(paths)

    @torch.no_grad()
    def reference_loop():
        return torch.cat([ref.encode_image(x) for x in loader])

    row = compare(name, ours, reference_loop, repeats=repeats, items=len(paths))
    shutil.rmtree(work, ignore_errors=True)
    return row


def unchanged_rerun(n: int) -> dict:
    """Seconds to re-run an update over an unchanged folder of `n` photos."""
    work = Path(tempfile.mkdtemp())
    folder = work / "photos"
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    checkpoint = work / "nano"
    liteclip.LiteClip("liteclip-nano", device="cpu", seed=0).save(checkpoint)
    start = time.perf_counter()
    index = liteclip.Index.build(folder, work / "lib.lcx", checkpoint, device="cpu")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    report = index.update()
    rerun_s = time.perf_counter() - start
    assert report["unchanged"] == n and report["embedded"] == 0
    shutil.rmtree(work, ignore_errors=True)
    return {"photos": n, "build_s": build_s, "unchanged_rerun_s": rerun_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phone", type=int, default=16)
    parser.add_argument("--flickr", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--unchanged", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    ref = reference_model("liteclip", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = saved_checkpoint(ref, Path(tmp))
        rows = []
        if args.phone:
            paths = phone_folder(args.phone)
            rows.append(
                indexing_case(
                    f"{len(paths)} 12-MP JPEGs, batch {args.batch}",
                    paths,
                    ref,
                    checkpoint,
                    args.batch,
                    args.repeats,
                )
            )
        if args.flickr:
            paths = flickr_folder(args.flickr)
            rows.append(
                indexing_case(
                    f"{len(paths)} 500x375 JPEGs, batch {args.batch}",
                    paths,
                    ref,
                    checkpoint,
                    args.batch,
                    args.repeats,
                )
            )
    print_table(
        "indexing from disk (cpu, fp32), reference: PIL + torchvision DataLoader", rows, "images/s"
    )
    extra = {}
    if args.unchanged:
        extra["unchanged"] = unchanged_rerun(args.unchanged)
        print(
            f"\nunchanged re-run over {args.unchanged} photos: "
            f"{extra['unchanged']['unchanged_rerun_s']:.2f} s "
            f"(first build {extra['unchanged']['build_s']:.1f} s, nano model)"
        )
    write_json(args.json, "index_photos", rows, **extra)


if __name__ == "__main__":
    main()
