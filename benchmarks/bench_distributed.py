"""Data-parallel training: throughput and the cost of the collectives per step.

    python benchmarks/bench_distributed.py [--batch 32] [--steps 16] [--json out.json]
    python benchmarks/bench_distributed.py --device cuda      # one NCCL rank on a GPU machine

Every case runs `liteclip.train` on `--model` (default `liteclip-nano`; fp32 on the CPU, the
run's default precision on a GPU) over the same generated data set, in fresh processes
started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT). Cases:

- `plain`: one process, `distributed=False` (the reference of the ratios);
- `1 rank`: one process, `distributed=True` with a world of one (gloo on the CPU, NCCL on a
  GPU): what the data-parallel path itself costs (three collectives through Python per step,
  the split backward), with no second process to wait for;
- `plain, batch 2B` and `2 ranks` (CPU only): one process with twice the batch, and two
  processes of `--batch` each (one thread each) on one machine: the same global batch.

Reported: pairs/s of the second epoch (the first warms up), and the share of the training time
spent inside the collective calls (timed around each `torch.distributed` call by wrapping
`ProcessGroup._run`, with a device synchronisation, so it is the wall time the step loses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from common import machine, write_json

from liteclip import datasets
from liteclip.distributed import start_local_ranks

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import liteclip
    from liteclip import distributed

    spent = {"seconds": 0.0, "calls": 0}
    original = distributed.ProcessGroup._run

    def timed(self, name, collective, *args):
        device = args[0].device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # time the collective, not the queued step work
        start = time.perf_counter()
        original(self, name, collective, *args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent["seconds"] += time.perf_counter() - start
        spent["calls"] += 1

    distributed.ProcessGroup._run = timed
    result = liteclip.train(**json.loads(sys.argv[1]))
    print("RESULT " + json.dumps({"history": result.history, **spent}))
    """
)


def run(world: int, kwargs: dict, threads: int | None) -> list[dict]:
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    procs = start_local_ranks(world, [sys.executable, "-c", WORKER, json.dumps(kwargs)], env)
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(err[-3000:])
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32, help="pairs per step per process")
    parser.add_argument("--steps", type=int, default=16, help="steps per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="liteclip-nano")
    parser.add_argument("--json")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = 2 * args.batch * args.steps + 64
        data = datasets.make_shapes(tmp / "data", n_images=images // 5 + 8, image_size=64)
        base = dict(
            data=str(data),
            model=args.model,
            epochs=2,
            lr=1e-4,
            device=args.device,
            val_fraction=0.0,
            max_steps_per_epoch=args.steps,
            progress=False,
        )
        cases = [
            ("plain, 1 process", 1, dict(distributed=False, batch_size=args.batch), None),
            ("1 rank (distributed path)", 1, dict(distributed=True, batch_size=args.batch), None),
        ]
        if args.device == "cpu":
            cases += [
                (
                    "plain, 1 process, batch 2B",
                    1,
                    dict(distributed=False, batch_size=2 * args.batch),
                    None,
                ),
                ("2 ranks x 1 thread", 2, dict(distributed=True, batch_size=args.batch), 1),
            ]
        rows = []
        for i, (name, world, more, threads) in enumerate(cases):
            kwargs = {**base, **more, "output": str(tmp / f"run{i}")}
            result = run(world, kwargs, threads)[0]
            last = result["history"][-1]
            train_seconds = sum(r["seconds"] for r in result["history"])
            rows.append(
                {
                    "case": name,
                    "processes": world,
                    "global_batch": world * more["batch_size"],
                    "pairs_per_s": last["pairs_per_second"],
                    "collective_calls": result["calls"],
                    "collective_share": result["seconds"] / train_seconds,
                }
            )
    reference = rows[0]["pairs_per_s"]
    print(f"\ndata-parallel training, {args.model}, {args.device}, {cpus} cores")
    header = f"{'case':30s} {'global batch':>12s} {'pairs/s':>9s} {'vs plain':>9s}"
    print(f"{header} {'in collectives':>15s}")
    for r in rows:
        r["ratio_vs_plain"] = r["pairs_per_s"] / reference
        print(
            f"{r['case']:30s} {r['global_batch']:12d} {r['pairs_per_s']:9.1f} "
            f"{r['ratio_vs_plain']:8.2f}x {100 * r['collective_share']:14.1f}%"
        )
    print(json.dumps(machine()))
    write_json(args.json, "distributed", rows)


if __name__ == "__main__":
    main()
