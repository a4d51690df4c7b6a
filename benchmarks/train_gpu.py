"""Training throughput of the full `liteclip` config on a GPU, with data loading, next to a
PyTorch eager reference step on the same architecture (no data loading: tensors already on
the device, so the reference is an upper bound for its own loop).

    python benchmarks/train_gpu.py [--steps 200] [--device cuda] [--json out.json]

liteclip trains on generated shapes images (PNG files decoded, resized and tokenized by its
loader threads) in bf16 with channels-last convolutions, its CUDA defaults. Reported:
steady-state pairs/s (the first steps excluded), the share of the epoch the training loop
waited on the loader, and the model-FLOPs utilisation (29 GFLOPs per pair, REFERENCE.md,
against the card's dense bf16 rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import liteclip  # noqa: E402
from liteclip import _liteclip  # noqa: E402

import reference  # noqa: E402

FLOPS_PER_PAIR = 29e9
DENSE_BF16 = {"H100": 790e12, "H200": 790e12}
WARMUP = 20


class Timer:
    """Observer for the Rust training loop: records when each step was handed back."""

    def __init__(self):
        self.times: list[float] = []
        self.record: dict = {}

    def epoch_start(self, _args):
        pass

    def step(self, _info):
        self.times.append(time.perf_counter())

    def epoch_end(self, record):
        self.record = record

    def message(self, text):
        print("  liteclip:", text)


def run_liteclip(data: Path, out: Path, batch: int, steps: int, device: str) -> dict:
    timer = Timer()
    _liteclip.train_model(
        {
            "data": str(data),
            "output": str(out),
            "model": "liteclip",
            "epochs": 1,
            "batch_size": batch,
            "lr": 1e-4,
            "device": device,
            "val_fraction": 0.0,
            "early_stopping_patience": None,
            "max_steps_per_epoch": steps,
            "prefetch": 8,
        },
        timer,
    )
    t = timer.times
    steady = batch * (len(t) - 1 - WARMUP) / (t[-1] - t[WARMUP])
    rec = timer.record
    return {
        "steps": len(t),
        "pairs_per_second": steady,
        "data_wait_share": rec["data_wait_seconds"] / rec["seconds"],
        "epoch_seconds": rec["seconds"],
    }


def run_reference(batch: int, steps: int, device: str) -> dict:
    model = reference.CLIP("liteclip").to(device).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    ids = torch.randint(1000, 5000, (batch, 16), device=device)
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": ids * 0}
    labels = torch.arange(batch, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            img = model.encode_image(images)
            txt = model.encode_text(text)
            logits = model.logit_scale.exp() * img.float() @ txt.float().t()
        loss = (
            torch.nn.functional.cross_entropy(logits, labels)
            + torch.nn.functional.cross_entropy(logits.t(), labels)
        ) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return {"steps": steps, "pairs_per_second": batch * steps / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in DENSE_BF16.items() if k in name), None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = liteclip.datasets.make_shapes(Path(tmp) / "data", n_images=6000, image_size=160)
        print(f"generated data in {time.perf_counter() - start:.1f} s")
        for batch, steps in [(64, args.steps), (256, min(args.steps, 110))]:
            ours = run_liteclip(data, Path(tmp) / f"run{batch}", batch, steps, args.device)
            ref = run_reference(batch, 50, args.device)
            row = {"batch": batch, "liteclip": ours, "reference": ref}
            row["ratio"] = ours["pairs_per_second"] / ref["pairs_per_second"]
            if peak:
                row["liteclip_mfu"] = ours["pairs_per_second"] * FLOPS_PER_PAIR / peak
                row["reference_mfu"] = ref["pairs_per_second"] * FLOPS_PER_PAIR / peak
            rows.append(row)
    print(f"device: {name}, torch {torch.__version__}")
    print(
        f"{'batch':>5s} {'liteclip pairs/s':>17s} {'data wait':>10s} {'MFU':>6s} "
        f"{'reference pairs/s':>18s} {'MFU':>6s} {'ratio':>6s}"
    )
    for r in rows:
        print(
            f"{r['batch']:5d} {r['liteclip']['pairs_per_second']:17.1f} "
            f"{r['liteclip']['data_wait_share'] * 100:9.1f}% "
            f"{r.get('liteclip_mfu', 0) * 100:5.1f}% "
            f"{r['reference']['pairs_per_second']:18.1f} {r.get('reference_mfu', 0) * 100:5.1f}% "
            f"{r['ratio']:6.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
