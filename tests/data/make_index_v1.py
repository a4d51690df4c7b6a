"""Writes tests/data/index-v1: a photo index in format version 1 (what liteclip wrote before
indexes kept photo metadata), for the upgrade test in tests/test_search.py. Run once with the
liteclip of that format; kept to show how the fixture was made.

The model is `LiteClip("liteclip-nano", device="cpu", seed=0)`, which the test re-creates (the
same seed gives the same weights with the same libtorch)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from exif_photos import exif_photo  # noqa: E402


def main(checkpoint_dir: Path) -> None:
    import liteclip

    out = HERE / "index-v1"
    shutil.rmtree(out, ignore_errors=True)
    photos = out / "photos"
    exif_photo(
        photos / "a.jpg",
        (200, 40, 40),
        taken="2022-07-14T18:03:22",
        make="Canon",
        model="Canon EOS R6",
        gps=(52.52, 13.405),
        seed=1,
    )
    exif_photo(
        photos / "sub" / "b.jpg",
        (40, 200, 40),
        modified="2021-03-02T10:00:00",
        make="Google",
        model="Pixel 7",
        orientation=6,
        size=(40, 24),
        seed=2,
    )
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)).save(photos / "c.png")
    liteclip.LiteClip("liteclip-nano", device="cpu", seed=0).save(checkpoint_dir)
    liteclip.Index.build(photos, out / "lib.lcx", checkpoint_dir, device="cpu")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
