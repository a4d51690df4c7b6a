"""Real-data training benchmark: Fashion-MNIST (Debian's `dataset-fashion-mnist`) as captions.

    sudo apt install dataset-fashion-mnist
    python benchmarks/fashion_mnist.py [--minutes 15] [--epochs N] [--json out.json]

The 60,000 training images are written as PNG files with one caption each, drawn from a few
templates per class ("a photo of a sneaker", ...). A small liteclip model (the nano towers at
32 px, a config JSON; configs are data) trains on them on the CPU, and then classifies the
10,000 test images zero-shot with a template no training caption used. Target: at least 80%
test accuracy in at most 15 minutes of training.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

import liteclip

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
TRAIN_TEMPLATES = [
    "a photo of a {}",
    "a {}",
    "a picture of a {}",
    "a grayscale image of a {}",
    "a small photo of the {}",
]
TEST_TEMPLATE = "a product shot of a {}"  # never used in training captions

CONFIG = {
    "image": {"dims": [32, 64, 128, 256], "depths": [1, 1, 2, 1]},
    "text": {
        "hidden_size": 128,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 64,
    },
    "embed_dim": 128,
    "image_size": 32,
    "max_length": 32,
}


def read_idx(name: str) -> np.ndarray:
    with gzip.open(SOURCE / name, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def prepare(root: Path) -> tuple[Path, Path]:
    """Writes the captioned training set and the class-folder test set (once)."""
    train_dir, test_dir = root / "train", root / "test"
    if (train_dir / "captions.txt").exists() and test_dir.exists():
        return train_dir, test_dir
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(0)
    images, labels = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
    (train_dir / "Images").mkdir(parents=True)
    rows = ["image,caption"]
    for i, (img, label) in enumerate(zip(images, labels)):
        name = f"{i:05d}.png"
        Image.fromarray(img, mode="L").save(train_dir / "Images" / name)
        rows.append(f"{name},{rng.choice(TRAIN_TEMPLATES).format(CLASSES[label])}")
    (train_dir / "captions.txt").write_text("\n".join(rows) + "\n")
    images, labels = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")
    for c in CLASSES:
        (test_dir / c).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img, mode="L").save(test_dir / CLASSES[label] / f"{i:05d}.png")
    return train_dir, test_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="runs/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    start = time.perf_counter()
    train_dir, test_dir = prepare(work / "data")
    print(f"data ready in {time.perf_counter() - start:.0f} s")
    config = work / "config.json"
    config.write_text(json.dumps(CONFIG))
    shutil.rmtree(work / "run", ignore_errors=True)

    start = time.perf_counter()
    result = liteclip.train(
        train_dir,
        work / "run",
        model=str(config),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=100,
        schedule="cosine",
        val_fraction=0.0,
        device="cpu",
        early_stopping_patience=None,
        progress=False,
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    zs = liteclip.evaluate(
        result.last_checkpoint, test_dir, task="zero-shot", templates=TEST_TEMPLATE, device="cpu"
    )
    eval_seconds = time.perf_counter() - start
    summary = {
        "train_minutes": train_seconds / 60,
        "eval_seconds": eval_seconds,
        "epochs": args.epochs,
        "pairs_per_second": [round(h["pairs_per_second"], 1) for h in result.history],
        "train_loss": [round(h["train_loss"], 4) for h in result.history],
        "zero_shot_top1": zs["top1"],
        "zero_shot_top5": zs["top5"],
        "per_class": dict(zip(zs["classes"], zs["per_class"])),
        "test_images": zs["images"],
        "template": TEST_TEMPLATE,
    }
    print(json.dumps(summary, indent=2))
    print(
        f"test accuracy {zs['top1'] * 100:.1f}% (target >= 80%) after "
        f"{train_seconds / 60:.1f} min of training (target <= 15)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
