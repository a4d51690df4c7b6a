"""12-megapixel phone photos: what decode="fast" (scaled JPEG decoding) costs and gains.

    python benchmarks/bench_phone_photos.py [--n 16] [--quality-n 48] [--json out.json]

Photos: the real test photos cropped, upscaled to 4032x3024 (a third portrait), with
sensor-like noise, saved as JPEG (`common.phone_photos`; nothing is downloaded).

Quality, at JPEG qualities 75, 90 and 95: for each photo, `decode="fast"` against
`decode="exact"`: mean absolute difference of the 224x224 model input (in 8-bit levels), the
cosine between the two embeddings (the full liteclip model, seeded random weights), and whether
zero-shot top-1 agrees, for that model over 100 caption-like labels and for a liteclip-nano
trained by the script on the built-in shapes (its 24 class prompts).

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
    captions,
    compare,
    phone_photos,
    print_table,
    reference,
    reference_model,
    saved_checkpoint,
    write_json,
)
from PIL import Image

import liteclip
from liteclip import datasets

QUALITIES = [75, 90, 95]


def trained_nano(work: Path) -> Path:
    """liteclip-nano trained for a few epochs on the built-in shapes (the demo's recipe)."""
    data = datasets.make_shapes(work / "shapes", n_images=600, seed=0, image_size=64)
    result = liteclip.train(
        data,
        work / "run",
        model="liteclip-nano",
        epochs=3,
        batch_size=64,
        warmup_steps=20,
        schedule="cosine",
        val_fraction=0.0,
        device="cpu",
        progress=False,
    )
    return Path(result.last_checkpoint)


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
    for precision in ("fp32", "bf16"):
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
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ref = reference_model("liteclip").eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        full = saved_checkpoint(ref, work)
        quality = []
        if not args.skip_quality:
            quality = quality_rows(full, trained_nano(work), args.quality_n)
        rows = speed_rows(ref, full, args.n, args.repeats)
    print("\nfast vs exact decoding")
    for r in quality:
        print(r)
    timed = [r for r in rows if not r["case"].startswith("predict")]
    print_table("12-MP photos (throughput: images/s)", timed, "img/s")
    print_table("predict on one 12-MP photo", [r for r in rows if r["case"].startswith("predict")])
    write_json(args.json, "phone_photos", rows, quality=quality)


if __name__ == "__main__":
    main()
