"""Real-data training benchmark: Fashion-MNIST (Debian's `dataset-fashion-mnist`) as captions.

    sudo apt install dataset-fashion-mnist
    python benchmarks/fashion_mnist.py [--epochs N] [--json out.json]
    python benchmarks/fashion_mnist.py --compare-shards [--epochs N]

The 60,000 training images are written as PNG files with one caption each, drawn from a few
templates per class ("a photo of a sneaker", ...). A small liteclip model (the nano towers at
32 px, a config JSON; configs are data) trains on them on the CPU, and then classifies the
10,000 test images zero-shot with a template no training caption used. Target: at least 80%
test accuracy in at most 15 minutes of training.

`--compare-shards` trains twice, each in its own process: from the folder and from the same
pairs written as WebDataset shards (`liteclip.datasets.write_shards`, 1,000 per shard), and
prints the accuracy difference (target: within 1 point), the throughput ratio (within 10%) and
each run's peak memory (the process's maximum RSS).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import liteclip
from liteclip import datasets

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


def train_and_test(data, test_dir: Path, work: Path, args: argparse.Namespace) -> dict:
    """Trains on `data` (a folder or shards) and classifies the test set zero-shot."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.json"
    config.write_text(json.dumps(CONFIG))
    shutil.rmtree(work / "run", ignore_errors=True)
    start = time.perf_counter()
    result = liteclip.train(
        data,
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
    return {
        "data": str(data),
        "train_minutes": train_seconds / 60,
        "eval_seconds": time.perf_counter() - start,
        "epochs": args.epochs,
        "pairs_per_second": [round(h["pairs_per_second"], 1) for h in result.history],
        "train_loss": [round(h["train_loss"], 4) for h in result.history],
        "zero_shot_top1": zs["top1"],
        "zero_shot_top5": zs["top5"],
        "per_class": dict(zip(zs["classes"], zs["per_class"])),
        "test_images": zs["images"],
        "template": TEST_TEMPLATE,
        # Linux reports the maximum resident set size in KiB.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def compare_shards(train_dir: Path, work: Path, args: argparse.Namespace) -> dict:
    """The folder run and the shard run, each in a fresh process (so peak memory is its own)."""
    shards = work / "data" / "shards"
    if not (shards / "00059.tar").exists():
        datasets.write_shards(train_dir, shards, samples_per_shard=1000)
    runs = {}
    for name, data in (("folder", train_dir), ("shards", f"{shards}/{{00000..00059}}.tar")):
        out = work / f"{name}.json"
        command = [sys.executable, __file__, "--work", str(work / name), "--data", str(data)]
        command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        command += ["--lr", str(args.lr), "--test-dir", str(work / "data" / "test")]
        subprocess.run(command + ["--json", str(out)], check=True)
        runs[name] = json.loads(out.read_text())
    folder, sharded = runs["folder"], runs["shards"]
    speed = np.mean(sharded["pairs_per_second"][1:] or sharded["pairs_per_second"]) / np.mean(
        folder["pairs_per_second"][1:] or folder["pairs_per_second"]
    )
    points = 100 * (sharded["zero_shot_top1"] - folder["zero_shot_top1"])
    print(
        f"folder {folder['zero_shot_top1'] * 100:.1f}% vs "
        f"shards {sharded['zero_shot_top1'] * 100:.1f}% "
        f"({points:+.1f} points; target within 1); throughput shards/folder {speed:.3f}x "
        f"(epochs 2 on; target >= 0.9x); peak RSS folder {folder['peak_rss_mib']:.0f} MiB, "
        f"shards {sharded['peak_rss_mib']:.0f} MiB"
    )
    return {"folder": folder, "shards": sharded, "points": points, "speed_ratio": speed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="runs/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--json")
    parser.add_argument("--compare-shards", action="store_true")
    # Used by --compare-shards for its two runs.
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--test-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.data:
        summary = train_and_test(args.data, Path(args.test_dir), work, args)
    else:
        start = time.perf_counter()
        train_dir, test_dir = prepare(work / "data")
        print(f"data ready in {time.perf_counter() - start:.0f} s")
        if args.compare_shards:
            summary = compare_shards(train_dir, work, args)
        else:
            summary = train_and_test(train_dir, test_dir, work, args)
            print(json.dumps(summary, indent=2))
            print(
                f"test accuracy {summary['zero_shot_top1'] * 100:.1f}% (target >= 80%) after "
                f"{summary['train_minutes']:.1f} min of training (target <= 15)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
