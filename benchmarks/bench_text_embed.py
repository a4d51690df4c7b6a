"""Text embedding throughput: 10,000 captions of Flickr-like length.

    python benchmarks/bench_text_embed.py [--n 10000] [--device cpu] [--json out.json]

Reference: the original's text path (WordPiece tokenizer padding every caption to 128
tokens, eager BertModel, mean pooling, projection head) in batches of 256. liteclip:
`LiteClip.encode_text(captions)` on the whole list (it batches by length itself).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import (
    PRECISIONS,
    captions,
    compare,
    print_table,
    reference,
    reference_and_liteclip,
    write_json,
)

import liteclip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    texts = captions(args.n)
    ref, models = reference_and_liteclip(args.device, liteclip.LiteClip.load)

    @torch.no_grad()
    def ref_encode():
        out = []
        for i in range(0, len(texts), 256):
            batch = {
                k: v.to(args.device) for k, v in reference.tokenize(texts[i : i + 256]).items()
            }
            out.append(ref.encode_text(batch).cpu())
        return torch.cat(out).numpy()

    expected = ref_encode()
    got = models["fp32"].encode_text(texts)
    models["bf16"].encode_text(texts)  # warm-up (first bf16 kernels)
    max_diff = float(np.abs(got - expected).max())
    assert max_diff < 1e-4, f"embeddings differ from the reference by {max_diff}"
    rows = [
        compare(
            f"encode {args.n} captions, {p}",
            lambda p=p: models[p].encode_text(texts),
            ref_encode,
            repeats=args.repeats,
            warmup=0,  # both sides ran once above
            items=args.n,
            device=args.device,
        )
        for p in PRECISIONS
    ]
    print_table(f"text embedding ({args.device}), reference fp32 padded to 128", rows, "captions/s")
    print(f"fp32 embeddings vs reference: max abs difference {max_diff:.2e}")
    write_json(args.json, "text_embed", rows, device=args.device, max_abs_diff=max_diff)


if __name__ == "__main__":
    main()
