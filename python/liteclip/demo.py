"""The main job on a fresh machine: everything from generated data to zero-shot predictions,
with nothing downloaded. `python -m liteclip demo` (or `make demo`) runs it."""

from __future__ import annotations

import time
from pathlib import Path

from . import ZeroShotPipeline
from .datasets import CLASSES, HELD_OUT_TEMPLATE, TRAIN_TEMPLATES, make_shapes
from .training import evaluate, train


def run(output="runs/demo", n_images: int = 2000, epochs: int = 10, device: str = "auto") -> dict:
    """Generates the shapes data set, trains liteclip-nano, evaluates retrieval on held-out
    images, and zero-shot classifies new images with a prompt never seen in training."""
    out = Path(output)
    start = time.perf_counter()
    print(f"[1/4] generating {n_images} captioned training images and 240 test images")
    train_dir = make_shapes(out / "data" / "train", n_images=n_images, seed=0)
    test_dir = make_shapes(out / "data" / "test", n_images=240, seed=1, layout="folders")
    rows = (train_dir / "captions.txt").read_text().splitlines()[1 : 1 + len(TRAIN_TEMPLATES)]
    print(f"      e.g. {rows[0].split(',', 1)[0]}: " + "; ".join(r.split(",", 1)[1] for r in rows))

    print(f"[2/4] training liteclip-nano for {epochs} epochs (continues a finished run if any)")
    # The training defaults: from scratch, lr 2e-3 with a warm-up over a tenth of the run and
    # cosine decay.
    result = train(
        train_dir,
        out / "run",
        model="liteclip-nano",
        epochs=epochs,
        batch_size=64,
        early_stopping_patience=None,
        device=device,
        resume=True,
    )
    checkpoint = result.best_checkpoint or result.last_checkpoint

    print("[3/4] retrieval on the validation images (all 5 captions of an image count)")
    val = evaluate(checkpoint, split="val", device=device)
    n = val["images"]
    print(
        f"      image->text R@1 {val['i2t_r1']:.3f} R@5 {val['i2t_r5']:.3f} R@10 "
        f"{val['i2t_r10']:.3f} | text->image R@1 {val['t2i_r1']:.3f} R@5 {val['t2i_r5']:.3f} "
        f"R@10 {val['t2i_r10']:.3f}  ({n} images; many captions fit several images)"
    )

    print(f"[4/4] zero-shot on 240 new images with the unseen prompt {HELD_OUT_TEMPLATE!r}")
    zs = evaluate(
        checkpoint, test_dir, task="zero-shot", templates=HELD_OUT_TEMPLATE, device=device
    )
    pipe = ZeroShotPipeline(checkpoint, device=device)
    labels = [HELD_OUT_TEMPLATE.format(c) for c in CLASSES]
    for class_dir in sorted(p for p in test_dir.iterdir() if p.is_dir())[:6]:
        image = sorted(class_dir.iterdir())[0]
        (label, p), *_ = pipe.predict(str(image), labels, top_k=1)
        mark = "ok " if label.endswith(class_dir.name) else "err"
        print(f"      {mark} {class_dir.name}/{image.name}: {label!r} ({p * 100:.1f}%)")
    chance = 1 / len(CLASSES)
    print(
        f"      accuracy: top-1 {zs['top1'] * 100:.1f}%, top-5 {zs['top5'] * 100:.1f}% over "
        f"{zs['images']} images, {len(CLASSES)} classes (chance {chance * 100:.1f}%)"
    )
    print(f"done in {time.perf_counter() - start:.0f} s; model in {checkpoint}")
    return {"train": result, "retrieval": val, "zero_shot": zs}
