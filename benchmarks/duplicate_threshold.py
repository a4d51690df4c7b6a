"""Where near-duplicates end and different photos begin, for a trained model: the cosine between
each photo and its copies (resized, recompressed, cropped, brightened), against the cosine
between each photo and its most similar *other* photo. The default threshold of
`Index.duplicates` should sit above nearly every pair of different photos and below nearly
every copy.

    python benchmarks/duplicate_threshold.py [--checkpoint runs/demo/run/best]
        [--photos runs/demo/data/test] [--json F]

Photos: the demo's 240 test images (synthetic shapes: many are near twins by design, the hard
case) and the test suite's five real photos. Needs `make demo` first (or any checkpoint).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from common import machine
from PIL import Image, ImageEnhance

import liteclip
from liteclip._liteclip import DUPLICATE_THRESHOLD

REAL = sorted((Path(__file__).parent.parent / "tests" / "data" / "images").glob("*.jpg"))


def copies(image: Image.Image) -> dict[str, bytes]:
    """The kinds of copy a photo library collects."""
    w, h = image.size

    def jpeg(img: Image.Image, quality: int) -> bytes:
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=quality)
        return out.getvalue()

    crop = image.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95)))
    return {
        "half size": jpeg(image.resize((max(1, w // 2), max(1, h // 2))), 90),
        "jpeg q=40": jpeg(image, 40),
        "crop 90%": jpeg(crop, 90),
        "brighter 15%": jpeg(ImageEnhance.Brightness(image).enhance(1.15), 90),
    }


def measure(model: liteclip.LiteClip, paths: list[Path]) -> dict:
    originals = model.encode_image(paths)
    per_kind: dict[str, list[float]] = {}
    for path, row in zip(paths, originals):
        image = Image.open(path).convert("RGB")
        made = copies(image)
        rows = model.encode_image(list(made.values()))
        for kind, copy_row in zip(made, rows):
            per_kind.setdefault(kind, []).append(float(row @ copy_row))
    scores = originals @ originals.T
    np.fill_diagonal(scores, -1)
    nearest_other = scores.max(axis=1)
    every_copy = np.concatenate([np.array(v) for v in per_kind.values()])
    return {
        "photos": len(paths),
        "copies": {
            k: {"min": min(v), "p5": float(np.percentile(v, 5))} for k, v in per_kind.items()
        },
        "copy_min": float(every_copy.min()),
        "copy_p1": float(np.percentile(every_copy, 1)),
        "copy_p5": float(np.percentile(every_copy, 5)),
        "other_max": float(nearest_other.max()),
        "other_p99": float(np.percentile(nearest_other, 99)),
        "other_p95": float(np.percentile(nearest_other, 95)),
        "other_median": float(np.median(nearest_other)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo/run/best")
    parser.add_argument("--photos", default="runs/demo/data/test")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = liteclip.LiteClip.load(args.checkpoint, device="cpu")
    shapes = sorted(p for p in Path(args.photos).rglob("*") if p.suffix in (".png", ".jpg"))
    results = {"machine": machine(), "checkpoint": args.checkpoint}
    for name, paths in [("shapes", shapes), ("real photos", REAL)]:
        r = measure(model, paths)
        results[name] = r
        print(f"{name}: {r['photos']} photos")
        for kind, s in r["copies"].items():
            print(f"  copy {kind:13s} cosine min {s['min']:.3f}  p5 {s['p5']:.3f}")
        print(
            f"  every copy: min {r['copy_min']:.3f}  p1 {r['copy_p1']:.3f}  p5 {r['copy_p5']:.3f}\n"
            f"  nearest other photo: median {r['other_median']:.3f}  p95 {r['other_p95']:.3f}  "
            f"p99 {r['other_p99']:.3f}  max {r['other_max']:.3f}"
        )
    print(f"default threshold now: {DUPLICATE_THRESHOLD}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
