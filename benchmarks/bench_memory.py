"""Peak memory (resident set) of a predict loop and of a training epoch, liteclip vs reference.

    python benchmarks/bench_memory.py [--predicts 200] [--json out.json]

Each case runs in its own fresh Python process and reports its peak RSS (`ru_maxrss`), so
the numbers include the interpreter and libtorch, as a user's process would.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

LABELS = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]
IMAGE = str(Path(__file__).resolve().parents[1] / "tests" / "data" / "images" / "cat_chelsea.jpg")


def child(case: str, work: Path, n: int) -> None:
    # liteclip's cases import nothing of the reference side (timm, transformers, torchvision),
    # whose import alone costs about 200 MB.
    image = IMAGE
    if case == "predict-liteclip":
        import liteclip

        pipe = liteclip.ZeroShotPipeline(work / "liteclip2.pt", device="cpu")
        for _ in range(n):
            pipe.predict(image, LABELS)
    elif case == "predict-reference":
        import torch
        from common import reference

        model = reference.CLIP("liteclip").eval()
        model.load_state_dict(torch.load(work / "liteclip2.pt", weights_only=True))
        for _ in range(n):
            reference.predict(model, image, LABELS)
    elif case == "train-liteclip":
        import liteclip

        liteclip.train(
            work / "data",
            work / "run",
            model="liteclip-nano",
            epochs=1,
            batch_size=64,
            device="cpu",
            val_fraction=0.0,
            progress=False,
        )
    elif case == "train-reference":
        from bench_train import run_reference

        run_reference(work / "data", 64, 10_000 // 64 - 12)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak}))


def measure(case: str, work: Path, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, "--work", str(work), "--predicts", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predicts", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.predicts)
        return
    from common import reference_model, saved_checkpoint, write_json

    import liteclip

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        saved_checkpoint(reference_model("liteclip"), work)
        liteclip.datasets.make_shapes(work / "data", n_images=2000, image_size=80)
        for name, label in [("predict", f"{args.predicts} predicts"), ("train", "nano epoch")]:
            ours = measure(f"{name}-liteclip", work, args.predicts)
            ref = measure(f"{name}-reference", work, args.predicts)
            rows.append(
                {
                    "case": f"peak RSS, {label} (MB)",
                    "liteclip_per_s": ours,
                    "reference_per_s": ref,
                    "speedup": ours / ref,
                    "liteclip_mb": ours,
                    "reference_mb": ref,
                }
            )
    print("\npeak resident memory (MB; the last column is liteclip / reference, lower is better)")
    for r in rows:
        mb = f"{r['liteclip_mb']:12.0f} {r['reference_mb']:12.0f}"
        print(f"{r['case']:46s} {mb} {r['speedup']:8.2f}")
    write_json(args.json, "memory", rows)


if __name__ == "__main__":
    main()
