"""The accuracy cost of bf16 inference, measured against liteclip's own fp32.

    python benchmarks/bench_precision.py [--json out.json]

1. The full `liteclip` architecture (seeded weights, as in the other benchmarks): cosine
   similarity of bf16 to fp32 embeddings for 256 photos of mixed sizes and 2,000 captions,
   and agreement of the zero-shot top-1 label among 24 prompts for every photo.
2. A trained model: `liteclip-nano` trained for a few epochs on the built-in shapes set, then
   zero-shot on 480 new images: top-1 agreement and accuracy in fp32 and bf16.
Targets (issue #4): mean cosine >= 0.995, same top-1 label on >= 99% of the images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import captions, image_folder, machine, reference_model, saved_checkpoint

import liteclip
from liteclip import datasets


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    args = parser.parse_args()
    out = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = saved_checkpoint(reference_model("liteclip"), tmp)
        fp32 = liteclip.LiteClip.load(ckpt, device="cpu", precision="fp32")
        bf16 = liteclip.LiteClip.load(ckpt, device="cpu", precision="bf16")
        paths = [str(p) for p in image_folder(256)]
        texts = captions(2000)
        prompts = [f"a photo of a {c}" for c in datasets.CLASSES]
        img32, img16 = fp32.encode_image(paths), bf16.encode_image(paths)
        txt32, txt16 = fp32.encode_text(texts), bf16.encode_text(texts)
        p32, p16 = fp32.encode_text(prompts), bf16.encode_text(prompts)
        top32 = (img32 @ p32.T).argmax(1)
        top16 = (img16 @ p16.T).argmax(1)
        out["liteclip"] = {
            "image_cosine_mean": float(cosine_rows(img32, img16).mean()),
            "image_cosine_min": float(cosine_rows(img32, img16).min()),
            "text_cosine_mean": float(cosine_rows(txt32, txt16).mean()),
            "text_cosine_min": float(cosine_rows(txt32, txt16).min()),
            "top1_agreement": float((top32 == top16).mean()),
            "images": len(paths),
        }

        train_dir = datasets.make_shapes(tmp / "train", n_images=2000, seed=0)
        test_dir = datasets.make_shapes(tmp / "test", n_images=480, seed=1, layout="folders")
        result = liteclip.train(
            train_dir,
            tmp / "run",
            model="liteclip-nano",
            epochs=10,
            lr=2e-3,
            warmup_steps=50,
            schedule="cosine",
            device="cpu",
            progress=False,
            early_stopping_patience=None,
            val_fraction=0.0,
        )
        files = sorted(test_dir.glob("*/*.png"))
        truth = np.array([datasets.CLASSES.index(f.parent.name) for f in files])
        labels = [datasets.HELD_OUT_TEMPLATE.format(c) for c in datasets.CLASSES]
        preds = {}
        for precision in ["fp32", "bf16"]:
            m = liteclip.LiteClip.load(result.last_checkpoint, device="cpu", precision=precision)
            emb = m.encode_image([str(f) for f in files])
            preds[precision] = (emb @ m.encode_text(labels).T).argmax(1)
            out.setdefault("nano_trained", {})[f"{precision}_accuracy"] = float(
                (preds[precision] == truth).mean()
            )
        out["nano_trained"]["top1_agreement"] = float((preds["fp32"] == preds["bf16"]).mean())
        out["nano_trained"]["images"] = len(files)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
