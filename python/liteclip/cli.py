"""The `liteclip` command line. Parsing and printing only: the work is done by the package."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N" (default: auto)'
    )


def _add_columns(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-column", default=None, help="CSV column of image paths")
    parser.add_argument("--caption-column", default=None, help="CSV column of captions")
    parser.add_argument("--images-dir", default=None, help="folder the image paths are relative to")


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
    _add_device(predict)
    predict.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="fp32 (exact) or bf16 (faster on CPUs and GPUs with bf16 units)",
    )
    predict.add_argument("--top-k", type=int, default=5, help="labels to show (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")

    train = sub.add_parser(
        "train",
        help="train a model on captioned images",
        description="Train a liteclip model contrastively on captioned images (see "
        "help(liteclip.train) for every option). Writes OUTPUT/best, OUTPUT/last and "
        "OUTPUT/metrics.jsonl.",
    )
    train.add_argument(
        "data", help="Flickr8k-layout folder (Images/ + captions.txt) or a CSV of image,caption"
    )
    train.add_argument(
        "--output", default="runs/liteclip", help="run folder (default: %(default)s)"
    )
    train.add_argument(
        "--model", default="liteclip", help='"liteclip", "liteclip-nano" or a config JSON path'
    )
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup-steps", type=int, default=0)
    train.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    train.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of images held out (by image)"
    )
    train.add_argument("--seed", type=int, default=0)
    _add_device(train)
    train.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: fp32 on CPU, bf16 on CUDA",
    )
    train.add_argument("--init", default=None, help="start from this checkpoint")
    train.add_argument("--image-weights", default=None, help="timm ConvNeXt weights file")
    train.add_argument("--text-weights", default=None, help="Hugging Face BERT folder or file")
    train.add_argument(
        "--patience",
        type=int,
        default=2,
        help="early stopping patience in epochs (0 disables it; default: 2)",
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in OUTPUT (or from CHECKPOINT, a run's last/ folder)",
    )
    train.add_argument("--augment", action="store_true", help="random resized crops")
    train.add_argument("--max-steps-per-epoch", type=int, default=None)
    _add_columns(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the result as JSON")

    evaluate = sub.add_parser(
        "evaluate",
        help="retrieval metrics on captioned data, or zero-shot accuracy on a class folder",
        description="Evaluate a checkpoint: image-text retrieval (R@1/5/10, loss) on a "
        "captioned data set, or zero-shot classification on a folder with one sub-folder "
        "per class (--zero-shot).",
    )
    evaluate.add_argument("checkpoint", help="checkpoint folder or file")
    evaluate.add_argument(
        "--data", default=None, help="captioned data set (default: the one the run trained on)"
    )
    evaluate.add_argument("--split", default="val", choices=["val", "train", "all"])
    evaluate.add_argument(
        "--zero-shot", metavar="FOLDER", default=None, help="class-per-sub-folder image folder"
    )
    evaluate.add_argument(
        "--template",
        action="append",
        default=None,
        help='prompt template with {} for the class name (repeatable; default "a photo of a {}.")',
    )
    evaluate.add_argument("--batch-size", type=int, default=64)
    _add_device(evaluate)
    evaluate.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    _add_columns(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser(
        "demo",
        help="the self-contained demo: generate data, train liteclip-nano, evaluate",
        description="Generate the built-in shapes data set, train liteclip-nano on it, "
        "evaluate retrieval, and zero-shot classify held-out images with an unseen prompt.",
    )
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--images", type=int, default=2000, help="training images to generate")
    demo.add_argument("--epochs", type=int, default=10)
    _add_device(demo)
    return parser


def _predict(args: argparse.Namespace) -> int:
    from . import ZeroShotPipeline

    pipeline = ZeroShotPipeline(args.checkpoint, device=args.device, precision=args.precision)
    ranking = pipeline.predict(args.image, args.labels, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"label": label, "probability": p} for label, p in ranking]))
    else:
        for label, p in ranking:
            print(f"{label}: {p * 100:.2f}%")
    return EXIT_OK


def _columns(args: argparse.Namespace) -> dict:
    return {
        "image_column": args.image_column,
        "caption_column": args.caption_column,
        "images_dir": args.images_dir,
    }


def _train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .training import train

    columns = {k: v for k, v in _columns(args).items() if v is not None}
    result = train(
        args.data,
        args.output,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        init=args.init,
        image_weights=args.image_weights,
        text_weights=args.text_weights,
        early_stopping_patience=args.patience or None,
        resume=args.resume,
        augment=args.augment,
        max_steps_per_epoch=args.max_steps_per_epoch,
        progress=not (args.no_progress or args.json),
        **columns,
    )
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"best checkpoint: {result.best_checkpoint}")
        print(f"last checkpoint: {result.last_checkpoint}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate

    if args.zero_shot:
        metrics = evaluate(
            args.checkpoint,
            args.zero_shot,
            task="zero-shot",
            templates=args.template,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
        )
    else:
        metrics = evaluate(
            args.checkpoint,
            args.data,
            split=args.split,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            **_columns(args),
        )
    if args.json:
        print(json.dumps(metrics))
    elif args.zero_shot:
        print(
            f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
            f"({metrics['images']} images)"
        )
        for name, acc in zip(metrics["classes"], metrics["per_class"]):
            print(f"  {name}: {acc:.3f}")
    else:
        for key in ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "loss"]:
            print(f"{key}: {metrics[key]:.4f}")
        print(f"images: {metrics['images']}, captions: {metrics['captions']}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.output, n_images=args.images, epochs=args.epochs, device=args.device)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"predict": _predict, "train": _train, "evaluate": _evaluate, "demo": _demo}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"liteclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        print(f"liteclip {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
