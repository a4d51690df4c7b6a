"""Preprocessing alone: decode + resize + center crop + normalise, images per second.

    python benchmarks/bench_preprocess.py [--n 256] [--json out.json]

On a folder of JPEGs of mixed sizes (mostly Flickr-like, some camera-sized). Reference:
`PIL.Image.open(p).convert("RGB")` + the original torchvision transform, in a loop
(single-threaded) and in a `multiprocessing.Pool` of all cores. liteclip: `liteclip.preprocess`
on the list, with one rayon thread (a child process with RAYON_NUM_THREADS=1) and with all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

from common import compare, image_folder, print_table, reference, write_json
from PIL import Image

TRANSFORM = reference.image_transform()


def ref_one(path) -> object:
    return TRANSFORM(Image.open(path).convert("RGB"))


def rows_for(threads: str, paths: list[str], repeats: int) -> list[dict]:
    import liteclip

    def ours():
        return liteclip.preprocess(paths)

    if threads == "1":

        def ref():
            return [ref_one(p) for p in paths]

    else:
        pool = multiprocessing.Pool(os.cpu_count())

        def ref():
            return pool.map(ref_one, paths, chunksize=8)

    row = compare(
        f"preprocess {len(paths)} JPEGs, {'1 thread' if threads == '1' else 'all cores'}",
        ours,
        ref,
        repeats=repeats,
        items=len(paths),
    )
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", choices=["1", "all"], help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    paths = [str(p) for p in image_folder(args.n)]
    if args.threads:  # a child run: print rows as JSON
        print(json.dumps(rows_for(args.threads, paths, args.repeats)))
        return
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--threads",
            "1",
            "--n",
            str(args.n),
            "--repeats",
            str(args.repeats),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(child.stdout.strip().splitlines()[-1])
    rows += rows_for("all", paths, args.repeats)
    print_table(f"preprocessing, {os.cpu_count()} cores", rows, "images/s")
    write_json(args.json, "preprocess", rows)


if __name__ == "__main__":
    main()
