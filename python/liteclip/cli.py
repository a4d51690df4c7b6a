"""The `liteclip` command line. Parsing and printing only: the work is done by the package."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteclip",
        description="liteclip: a small CLIP computed in Rust on libtorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = sub.add_parser(
        "predict",
        help="rank candidate labels for an image (zero-shot classification)",
        description="Rank candidate labels for an image, as ZeroShotPipeline.predict does.",
    )
    predict.add_argument("image", help="image file (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)")
    predict.add_argument("labels", nargs="+", metavar="LABEL", help="candidate labels (>= 2)")
    predict.add_argument(
        "--checkpoint",
        default="model/liteclip2.pt",
        help="original liteCLIP .pt, liteclip checkpoint folder or .safetensors "
        "(default: %(default)s)",
    )
    predict.add_argument(
        "--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N" (default: auto)'
    )
    predict.add_argument("--top-k", type=int, default=5, help="labels to show (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _predict(args: argparse.Namespace) -> int:
    from . import ZeroShotPipeline

    pipeline = ZeroShotPipeline(args.checkpoint, device=args.device)
    ranking = pipeline.predict(args.image, args.labels, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"label": label, "probability": p} for label, p in ranking]))
    else:
        for label, p in ranking:
            print(f"{label}: {p * 100:.2f}%")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        print(f"liteclip {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
