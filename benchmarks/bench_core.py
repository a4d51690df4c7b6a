"""Side-by-side timings of liteclip and the PyTorch reference (the original liteCLIP code path:
PIL + torchvision + tokenizer + timm/transformers eager model) on the same weights and inputs.

    python benchmarks/bench_core.py [--device cpu|cuda] [--repeats N] [--json out.json]

Runs alternate between the two implementations after a warm-up; medians are reported, with
the ratio liteclip / reference (below 1 is faster for times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import liteclip  # noqa: E402

import reference  # noqa: E402

IMAGE = ROOT / "tests" / "data" / "images" / "cat_chelsea.jpg"
LABELS = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def compare(name, ours, ref, device, repeats):
    for _ in range(2):  # warm-up
        ours()
        ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, device))
        t_ref.append(timed(ref, device))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    return {"case": name, "liteclip_ms": mo * 1e3, "reference_ms": mr * 1e3, "ratio": mo / mr}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = args.device
    # liteclip's fp32 is full fp32 on GPUs (no TF32 convolutions); compare like with like.
    torch.backends.cudnn.allow_tf32 = False

    ref = reference.perturbed_model("liteclip", seed=0).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = reference.save_original_checkpoint(ref, Path(tmp) / "liteclip2.pt")
        pipe = liteclip.ZeroShotPipeline(ckpt, device=device)
    model = pipe.model
    tf = reference.image_transform()

    @torch.no_grad()
    def ref_predict():
        img = tf(Image.open(IMAGE).convert("RGB")).unsqueeze(0).to(device)
        text = {k: v.to(device) for k, v in reference.tokenize(LABELS).items()}
        logits = ref.logit_scale.exp() * (ref.encode_image(img) @ ref.encode_text(text).t())
        return torch.softmax(logits.flatten(), 0).cpu()

    batch_np = torch.randn(32, 3, 224, 224).numpy()

    @torch.no_grad()
    def ref_images():
        # Both sides start from the same numpy batch and return CPU results.
        return ref.encode_image(torch.from_numpy(batch_np).to(device)).cpu()

    rows = [
        compare(
            "predict (1 image file, 3 labels)",
            lambda: pipe.predict(str(IMAGE), LABELS),
            ref_predict,
            device,
            args.repeats,
        ),
        compare(
            "image tower, batch 32 preprocessed",
            lambda: model.encode_image(batch_np),
            ref_images,
            device,
            args.repeats,
        ),
    ]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"{'case':40s} {'liteclip ms':>12s} {'reference ms':>13s} {'ratio':>7s}")
    for r in rows:
        print(
            f"{r['case']:40s} {r['liteclip_ms']:12.2f} {r['reference_ms']:13.2f} {r['ratio']:7.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
