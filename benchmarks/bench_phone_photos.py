"""12-megapixel phone photos: what decode="fast" (scaled JPEG decoding) costs and gains.

    python benchmarks/bench_phone_photos.py [--n 16] [--quality-n 48] [--json out.json]

Photos: the real test photos cropped, upscaled to 4032x3024 (a third portrait), with
sensor-like noise, saved as JPEG (`common.phone_photos`; nothing is downloaded).

Quality, at JPEG qualities 75, 90 and 95: for each photo, `decode="fast"` against
`decode="exact"`: mean absolute difference of the 224x224 model input (in 8-bit levels), the
cosine between the two embeddings (the full liteclip model, seeded random weights), and whether
zero-shot top-1 agrees, for that model over 100 caption-like labels and for a liteclip-nano
trained by the script on the built-in shapes (its 24 class prompts). And, for a sample where
the trained model is in its own domain: `--shapes-n` new shapes images (rendered at 256 px)
upscaled to 12 MP with the same sensor noise, quality 90: the nano model's top-1 agreement
between the two decoders and its accuracy with each.

Speed (one run, alternating, medians): preprocessing, from-disk embedding and predict on the
quality-90 photos. Reference: PIL open + convert + the original torchvision transform (one
thread, as the original ran), and the eager timm + transformers model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import (
    cached_jpegs,
    captions,
    compare,
    phone_photos,
    print_table,
    reference,
    reference_model,
    saved_checkpoint,
    trained_nano,
    write_json,
)
from PIL import Image

import liteclip
from liteclip import datasets

QUALITIES = [75, 90, 95]


def agreement(models: dict, photos: list[str], labels: list[str]) -> float:
    top = {
        mode: [r[0][0] for r in pipe.predict(photos, labels, top_k=1)]
        for mode, pipe in models.items()
    }
    return float(np.mean([a == b for a, b in zip(top["exact"], top["fast"])]))


def quality_rows(full: Path, nano: Path, n: int) -> list[dict]:
    modes = ("exact", "fast")
    full_models = {m: liteclip.LiteClip.load(full, device="cpu", decode=m) for m in modes}
    full_pipes = {m: liteclip.ZeroShotPipeline(full_models[m]) for m in modes}
    nano_pipes = {m: liteclip.ZeroShotPipeline(nano, device="cpu", decode=m) for m in modes}
    full_labels = captions(100, seed=3)
    shape_labels = [datasets.HELD_OUT_TEMPLATE.format(c) for c in datasets.CLASSES]
    rows = []
    for q in QUALITIES:
        photos = [str(p) for p in phone_photos(n, quality=q, seed=1)]
        std = np.array(reference.CLIP_STD, dtype=np.float32)[:, None, None] * 255
        exact = liteclip.preprocess(photos, decode="exact") * std
        fast = liteclip.preprocess(photos, decode="fast") * std
        e = {m: full_models[m].encode_image(photos) for m in modes}
        rows.append(
            {
                "quality": q,
                "photos": n,
                "mean_abs_levels": float(np.abs(exact - fast).mean()),
                "max_abs_levels": float(np.abs(exact - fast).max()),
                "cosine_min": float((e["exact"] * e["fast"]).sum(1).min()),
                "cosine_mean": float((e["exact"] * e["fast"]).sum(1).mean()),
                "top1_agreement_full_random_100_labels": agreement(full_pipes, photos, full_labels),
                "top1_agreement_trained_nano": agreement(nano_pipes, photos, shape_labels),
            }
        )
        print(rows[-1], flush=True)
    return rows


def camera_shapes(n: int, work: Path) -> tuple[list[str], list[int]]:
    """`n` new shapes images at 12 MP (upscaled, sensor noise, quality 90) and their classes."""
    folder = datasets.make_shapes(work / "shapes-test", n, seed=7, image_size=256, layout="folders")
    files = sorted(folder.glob("*/*.png"))
    classes = [datasets.CLASSES.index(f.parent.name) for f in files]

    def draw(i: int, rng: np.random.Generator, _sources: list) -> Image.Image:
        img = Image.open(files[i]).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.float32)
        noise = rng.standard_normal(pixels.shape, dtype=np.float32) * 1.5
        noise += rng.standard_normal(pixels.shape[:2], dtype=np.float32)[..., None] * 3.0
        return Image.fromarray((pixels + noise).clip(0, 255).astype(np.uint8))

    paths = cached_jpegs(f"camera-shapes-{n}", n, 7, draw, quality=90)
    return [str(p) for p in paths], classes


def shapes_row(nano: Path, n: int, work: Path) -> dict:
    photos, truth = camera_shapes(n, work)
    labels = [datasets.HELD_OUT_TEMPLATE.format(c) for c in datasets.CLASSES]
    top = {}
    for mode in ("exact", "fast"):
        pipe = liteclip.ZeroShotPipeline(nano, device="cpu", decode=mode)
        top[mode] = np.array([labels.index(r[0][0]) for r in pipe.predict(photos, labels, top_k=1)])
    row = {
        "photos": n,
        "top1_agreement_trained_nano": float((top["exact"] == top["fast"]).mean()),
        "accuracy_exact": float((top["exact"] == np.array(truth)).mean()),
        "accuracy_fast": float((top["fast"] == np.array(truth)).mean()),
    }
    print(row, flush=True)
    return row


def speed_rows(ref: reference.CLIP, full: Path, n: int, repeats: int) -> list[dict]:
    photos = [str(p) for p in phone_photos(n, quality=90, seed=0)]
    tf = reference.image_transform()

    def ref_preprocess():
        return [tf(Image.open(p).convert("RGB")) for p in photos]

    @torch.no_grad()
    def ref_embed():
        return ref.encode_image(torch.stack(ref_preprocess()))

    labels = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]

    @torch.no_grad()
    def ref_predict():
        img = tf(Image.open(photos[0]).convert("RGB")).unsqueeze(0)
        logits = ref.logit_scale.exp() * (
            ref.encode_image(img) @ ref.encode_text(reference.tokenize(labels)).t()
        )
        return torch.softmax(logits.flatten(), 0)

    rows = []
    for decode in ("exact", "fast"):
        rows.append(
            compare(
                f"preprocess {n} 12-MP JPEGs, decode={decode}",
                lambda d=decode: liteclip.preprocess(photos, decode=d),
                ref_preprocess,
                repeats=repeats,
                items=n,
            )
        )
    for precision in ("fp32", "bf16", "int8"):
        model = liteclip.LiteClip.load(full, device="cpu", precision=precision, decode="fast")
        rows.append(
            compare(
                f"embed {n} 12-MP JPEGs from disk, {precision}, fast",
                lambda m=model: m.encode_image(photos),
                ref_embed,
                repeats=repeats,
                items=n,
            )
        )
        pipe = liteclip.ZeroShotPipeline(model)
        rows.append(
            compare(
                f"predict, one 12-MP JPEG, {precision}, fast",
                lambda p=pipe: p.predict(photos[0], labels),
                ref_predict,
                repeats=repeats * 3,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16, help="photos timed")
    parser.add_argument("--quality-n", type=int, default=48, help="photos per JPEG quality")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--shapes-n", type=int, default=480, help="12-MP shapes images")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ref = reference_model("liteclip").eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        full = saved_checkpoint(ref, work)
        quality, shapes, rows = [], {}, []
        if not args.skip_quality:
            nano = trained_nano(work)
            quality = quality_rows(full, nano, args.quality_n)
            shapes = shapes_row(nano, args.shapes_n, work)
        if not args.skip_speed:
            rows = speed_rows(ref, full, args.n, args.repeats)
    print("\nfast vs exact decoding")
    for r in quality:
        print(r)
    if shapes:
        print("12-MP shapes, trained nano:", shapes)
    timed = [r for r in rows if not r["case"].startswith("predict")]
    print_table("12-MP photos (throughput: images/s)", timed, "img/s")
    print_table("predict on one 12-MP photo", [r for r in rows if r["case"].startswith("predict")])
    write_json(args.json, "phone_photos", rows, quality=quality, camera_shapes=shapes)


if __name__ == "__main__":
    main()
