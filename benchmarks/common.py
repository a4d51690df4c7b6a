"""Shared pieces of the benchmarks: the PyTorch reference, generated inputs, timing and output.

Every benchmark runs the reference (the original liteCLIP code path: PIL + torchvision
transforms, a BERT WordPiece tokenizer, timm ConvNeXt + Hugging Face BertModel in eager mode)
and liteclip on the same weights and inputs in one run, alternating, after a warm-up, and
reports medians and the ratio liteclip / reference.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import reference  # noqa: E402

PHOTOS = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
CACHE = ROOT / "runs" / "bench-data"


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                # What decides which precision is fastest (docs/guides/performance.md).
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16"]
                info["cpu_flags"] = [f for f in wanted if f in flags]
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(
    name: str,
    ours: Callable[[], object],
    ref: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    items: int = 1,
    device: str = "cpu",
    unit: str = "ms",
) -> dict:
    """Times `ours` and `ref` alternately; `items` per call turns times into throughputs."""
    for _ in range(warmup):
        ours()
        ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, acc in ((ours, t_ours), (ref, t_ref)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            acc.append(time.perf_counter() - start)
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    return {
        "case": name,
        "liteclip_s": mo,
        "reference_s": mr,
        "items": items,
        "liteclip_per_s": items / mo,
        "reference_per_s": items / mr,
        # time ratio (below 1 is faster) and throughput ratio (above 1 is faster)
        "time_ratio": mo / mr,
        "speedup": mr / mo,
    }


def print_table(title: str, rows: list[dict], throughput_unit: str | None = None) -> None:
    print(f"\n{title}")
    if throughput_unit:
        header = f"{'case':46s} {'liteclip':>12s} {'reference':>12s} {'speedup':>8s}"
        print(f"{header}  ({throughput_unit})")
        for r in rows:
            print(
                f"{r['case']:46s} {r['liteclip_per_s']:12.1f} {r['reference_per_s']:12.1f} "
                f"{r['speedup']:7.2f}x"
            )
    else:
        print(f"{'case':46s} {'liteclip ms':>12s} {'reference ms':>12s} {'ratio':>8s}")
        for r in rows:
            print(
                f"{r['case']:46s} {r['liteclip_s'] * 1e3:12.1f} {r['reference_s'] * 1e3:12.1f} "
                f"{r['time_ratio']:8.2f}"
            )


def write_json(path: str | None, benchmark: str, rows: list[dict], **extra) -> None:
    payload = {"benchmark": benchmark, "machine": machine(), "rows": rows, **extra}
    if path:
        Path(path).write_text(json.dumps(payload, indent=2))


def reference_model(preset: str = "liteclip", device: str = "cpu") -> reference.CLIP:
    return reference.perturbed_model(preset, seed=0).to(device)


def saved_checkpoint(model: reference.CLIP, folder: Path) -> Path:
    return reference.save_original_checkpoint(model.cpu(), folder / "liteclip2.pt")


PRECISIONS = ["fp32", "bf16"]


def reference_and_liteclip(device: str, load: Callable) -> tuple[reference.CLIP, dict]:
    """The full-size reference model on `device`, and `load(checkpoint, device=, precision=)`
    (``LiteClip.load`` or ``ZeroShotPipeline``) of the same weights for each precision."""
    ref = reference_model("liteclip", device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = saved_checkpoint(ref, Path(tmp))
        ref.to(device)
        models = {p: load(ckpt, device=device, precision=p) for p in PRECISIONS}
    return ref, models


# Sizes of the mixed folder: mostly Flickr-like photos, some phone-camera sized ones.
SIZES = (
    [(500, 375)] * 8
    + [(375, 500)] * 4
    + [(640, 480), (800, 600), (1024, 768)] * 2
    + [
        (1600, 1200),
        (2048, 1536),
        (3000, 2000),
        (4000, 3000),
    ]
)


def image_folder(n: int = 256, seed: int = 0) -> list[Path]:
    """`n` JPEGs of mixed sizes cut from the real test photos (cached under runs/)."""
    folder = CACHE / f"jpegs-{n}-{seed}"
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) == n:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in PHOTOS]
    paths = []
    for i in range(n):
        w, h = rng.choice(SIZES)
        src = rng.choice(sources)
        # A random crop of the photo, stretched to the target size, re-encoded.
        cw, ch = int(src.width * rng.uniform(0.6, 1.0)), int(src.height * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
        path = folder / f"{i:04d}.jpg"
        img.save(path, quality=rng.choice([80, 85, 90, 95]))
        paths.append(path)
    return paths


def cached_jpegs(
    name: str,
    n: int,
    seed: int,
    draw: Callable[[int, np.random.Generator, list], Image.Image],
    quality: int = 90,
    prefix: str = "",
) -> list[Path]:
    """`n` JPEGs made once by `draw(i, rng, sources)` from the real test photos and kept under
    runs/bench-data/`name` (made again only when the count differs)."""
    folder = CACHE / name
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) == n:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in PHOTOS]
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:04d}.jpg"
        draw(i, rng, sources).save(path, quality=quality)
        paths.append(path)
    return paths


def random_crop(src: Image.Image, rng: np.random.Generator, smallest: float) -> Image.Image:
    """A crop of `src` keeping between `smallest` and all of each side."""
    cw, ch = (
        int(src.width * rng.uniform(smallest, 1.0)),
        int(src.height * rng.uniform(smallest, 1.0)),
    )
    x, y = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
    return src.crop((x, y, x + cw, y + ch))


def phone_photos(n: int = 16, quality: int = 90, seed: int = 0) -> list[Path]:
    """`n` 12-megapixel JPEGs (4032x3024, a third of them portrait) as phones write them: the
    real test photos cropped, upscaled, with sensor-like noise (luma and chroma), saved at
    `quality` (cached under runs/). Nothing is downloaded."""

    def draw(i: int, rng: np.random.Generator, sources: list) -> Image.Image:
        size = (3024, 4032) if i % 3 == 2 else (4032, 3024)
        src = sources[i % len(sources)]
        img = random_crop(src, rng, 0.7).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(img, dtype=np.float32)
        luma = rng.normal(0, 3.0, pixels.shape[:2])[..., None]
        chroma = rng.normal(0, 1.5, pixels.shape)
        return Image.fromarray((pixels + luma + chroma).clip(0, 255).astype(np.uint8))

    return cached_jpegs(f"phone-{n}-{quality}-{seed}", n, seed, draw, quality=quality)


WORDS = {
    "who": [
        "A man",
        "A woman",
        "Two children",
        "A young girl",
        "A black dog",
        "A brown dog",
        "Three people",
        "A boy in a red shirt",
        "A group of friends",
        "An old man",
    ],
    "does": [
        "is running",
        "is jumping",
        "is sitting",
        "are playing",
        "is walking",
        "is climbing",
        "are standing",
        "is riding a bike",
        "is swimming",
        "is throwing a ball",
    ],
    "where": [
        "on the beach",
        "in the park",
        "through the snow",
        "near a fountain",
        "on a city street",
        "in front of a building",
        "across the grass",
        "by the lake at sunset",
        "on a wooden bridge",
        "in a crowded market",
    ],
}


def captions(n: int = 10_000, seed: int = 0) -> list[str]:
    """Flickr-like captions (about 8 to 20 tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = (
            f"{rng.choice(WORDS['who'])} {rng.choice(WORDS['does'])} {rng.choice(WORDS['where'])}"
        )
        if rng.random() < 0.4:
            text += f" while {rng.choice(WORDS['who']).lower()} {rng.choice(WORDS['does'])}"
        out.append(text + ".")
    return out


class StepTimer:
    """A training observer (what `_liteclip.train_model` calls back) that records when each step
    ends, for steady-state rates."""

    def __init__(self):
        self.times: list[float] = []

    def epoch_start(self, _):
        pass

    def step(self, _):
        self.times.append(time.perf_counter())

    def epoch_end(self, _):
        pass

    def message(self, _):
        pass

    def pairs_per_second(self, batch: int, skip: int) -> float:
        """Pairs per second over the steps after the first `skip`."""
        t = self.times
        return batch * (len(t) - 1 - skip) / (t[-1] - t[skip])


def rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def trained_nano(work: Path) -> Path:
    """liteclip-nano trained on 2,000 built-in shapes images for 10 epochs (a few minutes on
    2 cores; about 85% zero-shot top-1 over the 24 classes): a trained model whose predictions
    mean something, for the accuracy side of the speed options."""
    from liteclip import datasets, train

    data = datasets.make_shapes(work / "nano-train", n_images=2000, seed=0)
    result = train(
        data,
        work / "nano-run",
        model="liteclip-nano",
        epochs=10,
        lr=2e-3,
        warmup_steps=50,
        schedule="cosine",
        device="cpu",
        progress=False,
        early_stopping_patience=None,
        val_fraction=0.0,
    )
    return Path(result.last_checkpoint)
