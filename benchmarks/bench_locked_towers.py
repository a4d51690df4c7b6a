"""Training throughput with locked towers (LiT) against the same run with every weight training.

    python benchmarks/bench_locked_towers.py [--model liteclip] [--batch 16] [--steps 12]

One generated data set, one process; the cases alternate (``--repeats`` rounds) and the best
steady-state pairs/s of each is reported (the first ``WARMUP`` steps excluded), with its ratio
to the unlocked run. A locked image backbone has no backward pass and no optimizer update,
so the step costs its forward only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import StepTimer, write_json

import liteclip
from liteclip import _liteclip

WARMUP = 3

CASES = {
    "unlocked": {},
    "lock_image": {"lock_image": True},
    "lock_image + lock_text": {"lock_image": True, "lock_text": True},
}


def pairs_per_second(data: Path, out: Path, model: str, batch: int, steps: int, locks) -> float:
    timer = StepTimer()
    _liteclip.train_model(
        {
            "data": str(data),
            "output": str(out),
            "model": model,
            "epochs": 1,
            "batch_size": batch,
            "device": "cpu",
            "val_fraction": 0.0,
            "max_steps_per_epoch": steps + WARMUP,
            **locks,
        },
        timer,
    )
    return timer.pairs_per_second(batch, WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="liteclip")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        data = liteclip.datasets.make_shapes(Path(tmp) / "data", n_images=600, image_size=96)
        for r in range(args.repeats):
            for name, locks in CASES.items():
                out = Path(tmp) / f"{name}-{r}".replace(" ", "")
                runs[name].append(
                    pairs_per_second(data, out, args.model, args.batch, args.steps, locks)
                )
    base = max(runs["unlocked"])
    rows = [
        {"case": name, "pairs_per_s": max(v), "vs_unlocked": max(v) / base, "runs": v}
        for name, v in runs.items()
    ]
    print(f"\n{args.model} training on the CPU, batch {args.batch}, fp32 (pairs/s)")
    for row in rows:
        print(f"{row['case']:28s} {row['pairs_per_s']:10.1f} {row['vs_unlocked']:7.2f}x")
    write_json(args.json, "locked_towers", rows)


if __name__ == "__main__":
    main()
