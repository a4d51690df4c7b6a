"""Training throughput of `liteclip-nano` on the CPU, data loading included.

    python benchmarks/bench_train.py [--steps 60] [--batch 64] [--json out.json]

Both sides train on the same generated data set (shapes PNGs + captions.txt), fp32, Adam,
batch 64. Reference: a PyTorch eager loop as the original wrote it: a Dataset of caption
rows doing PIL open + the torchvision transform + WordPiece tokenization padded to the
maximum length, a shuffling `DataLoader` with one worker per core, the eager timm +
transformers model of the same nano config, the symmetric loss, `torch.optim.Adam`.
liteclip: `liteclip.train`. Reported: steady-state pairs/s (first steps excluded).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import torch
from common import StepTimer, print_table, reference, write_json
from PIL import Image

import liteclip
from liteclip import _liteclip

WARMUP = 10


class Rows(torch.utils.data.Dataset):
    def __init__(self, root: Path, max_length: int):
        with open(root / "captions.txt") as f:
            self.rows = list(csv.DictReader(f))
        self.root = root
        self.tf = reference.image_transform(64)
        self.max_length = max_length

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        image = self.tf(Image.open(self.root / "Images" / row["image"]).convert("RGB"))
        return image, row["caption"]


def collate(items, max_length=64):
    images = torch.stack([i for i, _ in items])
    return images, reference.tokenize([c for _, c in items], max_length=max_length)


def run_reference(data: Path, batch: int, steps: int) -> float:
    model = reference.CLIP("liteclip-nano").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        Rows(data, 64),
        batch_size=batch,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=True,
    )
    labels = torch.arange(batch)
    times = []
    done = 0
    while done < steps + WARMUP:
        for images, text in loader:
            img, txt = model.encode_image(images), model.encode_text(text)
            logits = model.logit_scale.exp() * img @ txt.t()
            loss = (
                torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.t(), labels)
            ) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            times.append(time.perf_counter())
            done += 1
            if done == steps + WARMUP:
                break
    return batch * (len(times) - 1 - WARMUP) / (times[-1] - times[WARMUP])


def run_liteclip(data: Path, out: Path, batch: int, steps: int) -> float:
    timer = StepTimer()
    _liteclip.train_model(
        {
            "data": str(data),
            "output": str(out),
            "model": "liteclip-nano",
            "epochs": 1,
            "batch_size": batch,
            "lr": 1e-3,
            "device": "cpu",
            "val_fraction": 0.0,
            "early_stopping_patience": None,
            "max_steps_per_epoch": steps + WARMUP,
        },
        timer,
    )
    return timer.pairs_per_second(batch, WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = liteclip.datasets.make_shapes(Path(tmp) / "data", n_images=2000, image_size=80)
        for r in range(args.repeats):  # alternate
            ours.append(run_liteclip(data, Path(tmp) / f"run{r}", args.batch, args.steps))
            ref.append(run_reference(data, args.batch, args.steps))
    o, f = max(ours), max(ref)
    rows = [
        {
            "case": f"liteclip-nano training, batch {args.batch}, fp32",
            "liteclip_per_s": o,
            "reference_per_s": f,
            "speedup": o / f,
            "liteclip_runs": ours,
            "reference_runs": ref,
        }
    ]
    print_table("training throughput (cpu), data loading included", rows, "pairs/s")
    write_json(args.json, "train_cpu", rows)


if __name__ == "__main__":
    main()
