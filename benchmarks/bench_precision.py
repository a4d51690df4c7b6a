"""Reduced precision (bf16, int8) against liteclip's own fp32 on the CPU: speed and accuracy.

    python benchmarks/bench_precision.py [--json out.json] [--precisions bf16 int8] [--speed-only]

To see what an older CPU would do, cap the instruction sets libtorch's kernels use, e.g. an
AVX2-only CPU: `MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`.

1. Speed, alternating with fp32 in one run: the image tower on 16 preprocessed 224-px images,
   the text tower on 256 captions, and embedding 32 photos from disk.
2. The full `liteclip` architecture (seeded weights, as in the other benchmarks): cosine
   similarity to fp32 embeddings for 256 photos of mixed sizes and 2,000 captions, and agreement
   of the zero-shot top-1 label among 24 prompts for every photo.
3. A trained model: `liteclip-nano` trained by `common.trained_nano` on the built-in shapes, then
   zero-shot on 480 new images: top-1 agreement with fp32 and accuracy.
Targets: bf16 mean cosine >= 0.995, same top-1 label on >= 99% of the images;
int8 image tower >= 1.8x fp32, text tower faster, top-1 agreement >= 99%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import (
    captions,
    compare,
    image_folder,
    machine,
    print_table,
    reference_model,
    saved_checkpoint,
    trained_nano,
)

import liteclip
from liteclip import datasets


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def speed(models: dict, reduced: list[str]) -> list[dict]:
    """Each reduced precision timed against fp32, alternating (the "reference" column)."""
    pixels = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    texts = captions(256)
    paths = [str(p) for p in image_folder(32)]
    cases = [  # (name, what is encoded, items per call)
        ("image tower, 16 x 224 px", "encode_image", pixels, 16),
        ("text tower, 256 captions", "encode_text", texts, 256),
        ("32 photos from disk", "encode_image", paths, 32),
    ]
    rows = []
    for name in reduced:
        for case, method, inputs, items in cases:
            ours = getattr(models[name], method)
            fp32 = getattr(models["fp32"], method)
            rows.append(
                compare(
                    f"{name} {case}",
                    lambda f=ours, x=inputs: f(x),
                    lambda f=fp32, x=inputs: f(x),
                    repeats=3,
                    items=items,
                )
            )
    print_table("speed against fp32 (reference column = liteclip fp32)", rows, "items/s")
    return rows


def full_model_accuracy(models: dict, reduced: list[str]) -> dict:
    paths = [str(p) for p in image_folder(256)]
    texts = captions(2000)
    prompts = [f"a photo of a {c}" for c in datasets.CLASSES]
    fp32 = models["fp32"]
    img32, txt32 = fp32.encode_image(paths), fp32.encode_text(texts)
    top32 = (img32 @ fp32.encode_text(prompts).T).argmax(1)
    out = {}
    for name in reduced:
        m = models[name]
        img, txt = m.encode_image(paths), m.encode_text(texts)
        top = (img @ m.encode_text(prompts).T).argmax(1)
        out[name] = {
            "image_cosine_mean": float(cosine_rows(img32, img).mean()),
            "image_cosine_min": float(cosine_rows(img32, img).min()),
            "text_cosine_mean": float(cosine_rows(txt32, txt).mean()),
            "text_cosine_min": float(cosine_rows(txt32, txt).min()),
            "top1_agreement": float((top32 == top).mean()),
            "images": len(paths),
        }
    return out


def trained_model_accuracy(tmp: Path, reduced: list[str]) -> dict:
    checkpoint = trained_nano(tmp)
    test_dir = datasets.make_shapes(tmp / "test", n_images=480, seed=1, layout="folders")
    files = sorted(test_dir.glob("*/*.png"))
    truth = np.array([datasets.CLASSES.index(f.parent.name) for f in files])
    labels = [datasets.HELD_OUT_TEMPLATE.format(c) for c in datasets.CLASSES]
    preds, embeddings, out = {}, {}, {"images": len(files)}
    for precision in ["fp32", *reduced]:
        m = liteclip.LiteClip.load(checkpoint, device="cpu", precision=precision)
        embeddings[precision] = m.encode_image([str(f) for f in files])
        preds[precision] = (embeddings[precision] @ m.encode_text(labels).T).argmax(1)
        out[f"{precision}_accuracy"] = float((preds[precision] == truth).mean())
    for name in reduced:
        out[f"{name}_top1_agreement"] = float((preds["fp32"] == preds[name]).mean())
        out[f"{name}_image_cosine_min"] = float(
            cosine_rows(embeddings["fp32"], embeddings[name]).min()
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    reduced = args.precisions
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = saved_checkpoint(reference_model("liteclip"), tmp)
        models = {
            p: liteclip.LiteClip.load(ckpt, device="cpu", precision=p) for p in ["fp32", *reduced]
        }
        out["speed"] = speed(models, reduced)
        if args.speed_only:
            print(json.dumps(out["machine"], indent=2))
            return
        out["liteclip"] = full_model_accuracy(models, reduced)
        out["nano_trained"] = trained_model_accuracy(tmp, reduced)
    print(json.dumps({k: v for k, v in out.items() if k != "speed"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
