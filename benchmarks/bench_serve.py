"""`liteclip serve` under load: 16 concurrent clients over loopback for 20 seconds of mixed
`/predict` (a Flickr-size JPEG and 3-5 labels out of 40) and `/search` (two or three words),
with batching (`--max-batch 32`) against without (`--max-batch 1`), alternating.

    python benchmarks/bench_serve.py [--clients 16] [--seconds 20] [--rounds 1]
        [--model liteclip] [--photos 256] [--predict-share 0.5] [--json F]

Reports per run: requests answered, throughput, p50/p99 latency, 5xx count, batch sizes from
/healthz; and the throughput ratio batched / unbatched (same process, same inputs). The model is
the full-size architecture with random weights (the speed is the same as trained weights); the
index holds `--photos` Flickr-size JPEGs cut from the test photos. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import image_folder, machine

import liteclip

LABELS = [
    f"a photo of {w}"
    for w in (
        "a cat,a dog,a rocket,a cup of coffee,an astronaut,a raccoon,a beach,a mountain,a car,"
        "a bicycle,a child,a tree,a boat,a plane,a house,a bird,a horse,a pizza,a flower,a book,"
        "a street,a river,a bridge,a laptop,a phone,a chair,a table,a guitar,a ball,a train,"
        "a bus,a forest,a lake,a snowman,a dinner,a cake,a sunset,a city,a crowd,a field"
    ).split(",")
]
WORDS = ["dog", "cat", "beach", "red", "running", "child", "snow", "water", "city", "night"]


def start_server(checkpoint: Path, index: Path, max_batch: int, log: Path) -> tuple:
    command = [sys.executable, "-m", "liteclip", "serve", "--checkpoint", str(checkpoint)]
    command += ["--index", str(index), "--port", "0", "--device", "cpu", "--no-access-log"]
    command += ["--max-batch", str(max_batch)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    while "listening on http://" not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    url = log.read_text().split("listening on ", 1)[1].split()[0]
    return proc, url


def load(url: str, clients: int, seconds: float, images: list[bytes], share: float) -> dict:
    latencies: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                if rng.random() < share:
                    labels = list(rng.choice(LABELS, int(rng.integers(3, 6)), replace=False))
                    image = images[int(rng.integers(len(images)))]
                    files = {"image": ("photo.jpg", image)}
                    r = c.post("/predict", data={"labels": labels}, files=files)
                else:
                    q = " ".join(rng.choice(WORDS, int(rng.integers(2, 4))))
                    r = c.get("/search", params={"q": q, "k": 10})
                with lock:
                    latencies.append(time.perf_counter() - start)
                    codes.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {
        "requests": len(codes),
        "seconds": elapsed,
        "per_s": len(codes) / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors_5xx": sum(c >= 500 for c in codes),
        "other_non_200": sum(c != 200 and c < 500 for c in codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", default="liteclip")
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--predict-share", type=float, default=0.5, help="the rest: /search")
    parser.add_argument("--json")
    args = parser.parse_args()

    photos = image_folder(args.photos)
    images = [p.read_bytes() for p in photos[:32]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "model"
        liteclip.LiteClip(args.model, device="cpu", seed=0).save(checkpoint)
        index = tmp / "photos.lcx"
        built = time.perf_counter()
        liteclip.Index.build(photos[0].parent, index, checkpoint, device="cpu")
        print(f"indexed {len(photos)} photos in {time.perf_counter() - built:.1f}s")
        for _ in range(args.rounds):
            for max_batch in (32, 1):
                proc, url = start_server(checkpoint, index, max_batch, tmp / "serve.log")
                try:
                    # Warm-up: the first calls allocate and load the index.
                    load(url, args.clients, 2, images, args.predict_share)
                    row = {
                        "max_batch": max_batch,
                        **load(url, args.clients, args.seconds, images, args.predict_share),
                    }
                    row["batching"] = httpx.get(url + "/healthz").json()["batching"]
                finally:
                    proc.send_signal(signal.SIGTERM)
                    row["exit_status"] = proc.wait(60)
                rows.append(row)
                b = row["batching"]
                mean = {
                    k: round(v["requests"] / max(v["batches"], 1), 1)
                    for k, v in b.items()
                    if v["requests"]
                }
                print(
                    f"max-batch {max_batch:2d}: {row['requests']:5d} requests in "
                    f"{row['seconds']:.1f}s = {row['per_s']:6.1f}/s, p50 {row['p50_ms']:7.1f} ms, "
                    f"p99 {row['p99_ms']:7.1f} ms, 5xx {row['errors_5xx']}, mean batch {mean}"
                )
    batched = np.median([r["per_s"] for r in rows if r["max_batch"] == 32])
    single = np.median([r["per_s"] for r in rows if r["max_batch"] == 1])
    print(f"\nthroughput with batching / without: {batched / single:.2f}x ({args.clients} clients)")
    if args.json:
        payload = {"benchmark": "serve", "machine": machine(), "rows": rows, "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
