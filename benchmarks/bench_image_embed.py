"""Image embedding throughput from files on disk: decode + transform + forward.

    python benchmarks/bench_image_embed.py [--n 256] [--batch 32 256] [--device cpu]
        [--decode exact [fast]] [--precisions fp32 [bf16]] [--json F]

On a folder of JPEGs of mixed sizes. Reference: a torch `DataLoader` (workers = cores) over a
Dataset doing `PIL.Image.open(p).convert("RGB")` + the original torchvision transform, feeding
the eager timm + transformers model batch by batch. liteclip: `LiteClip.encode_image(paths)`
in chunks of the batch size, in fp32 (exact) and bf16, for each `--decode` mode. On a GPU the
forward-only rate of the eager tower on device-resident tensors is measured too, and each
liteclip row at the largest batch is given as a share of it (target: >= 50%).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import (
    PRECISIONS,
    compare,
    image_folder,
    print_table,
    reference,
    reference_and_liteclip,
    write_json,
)
from PIL import Image

import liteclip


class Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths
        self.tf = reference.image_transform()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode", nargs="+", default=["exact"], choices=["exact", "fast"])
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--json")
    args = parser.parse_args()
    paths = [str(p) for p in image_folder(args.n)]

    def load(checkpoint, **kwargs):
        return {d: liteclip.LiteClip.load(checkpoint, decode=d, **kwargs) for d in args.decode}

    ref, models = reference_and_liteclip(args.device, load)
    workers = os.cpu_count() or 1
    rows = []
    for batch in args.batch:
        loader = torch.utils.data.DataLoader(Files(paths), batch_size=batch, num_workers=workers)

        @torch.no_grad()
        def ref_embed(loader=loader):
            return torch.cat([ref.encode_image(x.to(args.device)).cpu() for x in loader])

        for p in args.precisions:
            for d in args.decode:

                def ours(model=models[p][d], batch=batch):
                    return [
                        model.encode_image(paths[i : i + batch])
                        for i in range(0, len(paths), batch)
                    ]

                row = compare(
                    f"{len(paths)} files, batch {batch}, {p}, decode {d}",
                    ours,
                    ref_embed,
                    repeats=args.repeats,
                    items=len(paths),
                    device=args.device,
                )
                rows.append({**row, "batch": batch, "precision": p, "decode": d})
    print_table(f"image embedding from disk ({args.device}), reference fp32", rows, "images/s")
    extra = {}
    if args.device.startswith("cuda"):
        # The forward-only bound: the eager tower on a batch already on the device.
        batch = max(args.batch)
        x = torch.randn(batch, 3, 224, 224, device=args.device)
        for name, ctx in [
            ("fp32", torch.autocast("cuda", enabled=False)),
            ("bf16", torch.autocast("cuda", dtype=torch.bfloat16)),
        ]:
            with torch.no_grad(), ctx:
                for _ in range(3):
                    ref.encode_image(x)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(10):
                    ref.encode_image(x)
                torch.cuda.synchronize()
            extra[f"forward_only_{name}_per_s"] = 10 * batch / (time.perf_counter() - start)
        for r in rows:
            if r["batch"] == batch:
                bound = extra[f"forward_only_{r['precision']}_per_s"]
                r["share_of_forward_bound"] = r["liteclip_per_s"] / bound
                print(
                    f"{r['case']}: {r['share_of_forward_bound'] * 100:.1f}% of the forward-only "
                    f"rate on device-resident tensors ({bound:.0f}/s)"
                )
    write_json(args.json, "image_embed", rows, device=args.device, **extra)


if __name__ == "__main__":
    main()
