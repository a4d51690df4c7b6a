"""Predict latency: one image file, three labels, the full pipeline, called repeatedly.

    python benchmarks/bench_predict.py [--device cpu] [--repeats 15] [--json out.json]

Reference: the original liteCLIP `ZeroShotPipeline.predict` (PIL open + convert, torchvision
transforms, tokenizer padding to 128, eager timm + transformers model, softmax of the scaled
similarities). liteclip: `ZeroShotPipeline.predict` in fp32 (exact parity) and in bf16.
"""

from __future__ import annotations

import argparse

import torch
from common import (
    PHOTOS,
    PRECISIONS,
    compare,
    print_table,
    reference,
    reference_and_liteclip,
    write_json,
)

import liteclip

LABELS = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    image = str(next(p for p in PHOTOS if "cat" in p.name))
    ref, pipes = reference_and_liteclip(args.device, liteclip.ZeroShotPipeline)

    tf = reference.image_transform()

    @torch.no_grad()
    def ref_predict():
        from PIL import Image

        img = tf(Image.open(image).convert("RGB")).unsqueeze(0).to(args.device)
        text = {k: v.to(args.device) for k, v in reference.tokenize(LABELS).items()}
        logits = ref.logit_scale.exp() * (ref.encode_image(img) @ ref.encode_text(text).t())
        probs = torch.softmax(logits.flatten(), 0)
        return sorted(zip(LABELS, probs.tolist()), key=lambda x: -x[1])

    rows = [
        compare(
            f"predict, {p}",
            lambda p=p: pipes[p].predict(image, LABELS),
            ref_predict,
            repeats=args.repeats,
            warmup=2,
            device=args.device,
        )
        for p in PRECISIONS
    ]
    print_table(f"predict latency ({args.device}), reference fp32", rows)
    write_json(args.json, "predict", rows, device=args.device)


if __name__ == "__main__":
    main()
