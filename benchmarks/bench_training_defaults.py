"""Zero-shot accuracy of liteclip-nano trained from scratch with the training defaults, against
other schedules, and from the same pairs as a folder and as shards written in class order.

    python benchmarks/bench_training_defaults.py [--images 2000] [--epochs 10] [--batch 64]
        [--cases defaults,constant-2e-3,constant-2e-4,shards-class-order,shards-shuffled]
        [--seed 0]

The built-in shapes set (24 classes, five captions per image), judged by zero-shot top-1 on 240
new images with a prompt template no training caption uses (chance 4.2%). Every case passes
only data, output, model, epochs and batch size, plus what the case changes. An epoch over
shards trains each image once, one over the folder each caption once (five per image, of the
80% of the images left after the validation split): shard cases train 4x the epochs, so that
every case sees the same number of pairs.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common import write_json

import liteclip
from liteclip import datasets

CASES = {
    "defaults": {},
    "constant-2e-3": {"schedule": "constant", "warmup_steps": 0},
    "constant-2e-4": {"schedule": "constant", "warmup_steps": 0, "lr": 2e-4},
    "shards-class-order": {"shards": False},
    "shards-shuffled": {"shards": True},
}


def class_ordered_csv(train: Path) -> Path:
    with open(train / "captions.txt") as f:
        rows = list(csv.DictReader(f))
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row["caption"])

    def class_of(image: str) -> str:
        return next(c for c in datasets.CLASSES if c in by_image[image][0])

    path = train / "by_class.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image in sorted(by_image, key=class_of):
            writer.writerows((image, c) for c in by_image[image])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = datasets.make_shapes(root / "train", n_images=args.images, seed=0)
        test = datasets.make_shapes(root / "test", n_images=240, seed=1, layout="folders")
        for name in args.cases.split(","):
            options = dict(CASES[name])
            data, epochs = train, args.epochs
            if "shards" in options:
                shuffle = options.pop("shards")
                data = root / f"shards-{name}"
                datasets.write_shards(
                    class_ordered_csv(train), data, samples_per_shard=50, shuffle=shuffle
                )
                epochs = 4 * args.epochs
            start = time.perf_counter()
            result = liteclip.train(
                data,
                root / "runs" / name,
                model="liteclip-nano",
                epochs=epochs,
                batch_size=args.batch,
                seed=args.seed,
                progress=False,
                **options,
            )
            checkpoint = result.best_checkpoint or result.last_checkpoint
            top1 = liteclip.evaluate(
                checkpoint, test, task="zero-shot", templates=datasets.HELD_OUT_TEMPLATE
            )["top1"]
            rows.append(
                {
                    "case": name,
                    "zero_shot_top1": top1,
                    "epochs_run": len(result.history),
                    "final_train_loss": result.history[-1]["train_loss"],
                    "warnings": sum(len(h["warnings"]) for h in result.history),
                    "seconds": time.perf_counter() - start,
                }
            )
            r = rows[-1]
            print(
                f"{name:22s} top-1 {r['zero_shot_top1']:.3f}  epochs {r['epochs_run']:3d}  "
                f"loss {r['final_train_loss']:.3f}  warnings {r['warnings']}  "
                f"{r['seconds']:.0f} s",
                flush=True,
            )
    write_json(
        args.json, "training_defaults", rows, images=args.images, batch=args.batch, seed=args.seed
    )


if __name__ == "__main__":
    main()
