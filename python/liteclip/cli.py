"""The `liteclip` command line. Parsing and printing only: the work is done by the package."""

from __future__ import annotations

import argparse
import json
import os
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
        "data",
        nargs="?",
        help="Flickr8k-layout folder (Images/ + captions.txt) or a CSV of image,caption",
    )
    train.add_argument("--data", dest="data_option", metavar="DATA", help="the same as DATA")
    train.add_argument(
        "--output", default="runs/liteclip", help="run folder (default: %(default)s)"
    )
    train.add_argument(
        "--model", default="liteclip", help='"liteclip", "liteclip-nano" or a config JSON path'
    )
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument(
        "--batch-size", type=int, default=64, help="pairs per step (per process under torchrun)"
    )
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
    train.add_argument(
        "--distributed",
        default="auto",
        choices=["auto", "yes", "no"],
        help="data-parallel over torch.distributed (auto: when torchrun started several processes)",
    )
    train.add_argument(
        "--local-loss",
        action="store_true",
        help="distributed: each rank computes its own rows of the loss (same gradient, less work)",
    )
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

    embed = sub.add_parser(
        "embed",
        help="embed a folder of images or a text file of captions into a .npy file",
        description="Embed every image under a folder (recursively) or every line of a text "
        "file, writing OUTPUT (float32, one unit-length row per item) and OUTPUT's index "
        "(OUTPUT with .json: what each row is). Unreadable images are skipped and reported.",
    )
    embed.add_argument("source", help="folder of images, or a .txt file with one text per line")
    embed.add_argument("--checkpoint", required=True, help="checkpoint folder or file")
    embed.add_argument("--output", default="embeddings.npy", help="(default: %(default)s)")
    embed.add_argument("--batch-size", type=int, default=64)
    _add_device(embed)
    embed.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    embed.add_argument("--json", action="store_true", help="print a JSON summary")

    search = sub.add_parser(
        "search",
        help="search embedded images (or texts) with a text query (or an image)",
        description="Rank the rows of an embedding file made by `liteclip embed` against a "
        "query, by cosine similarity.",
    )
    search.add_argument("query", help="query text (or an image path with --image)")
    search.add_argument("--index", default="embeddings.npy", help="file from `liteclip embed`")
    search.add_argument("--checkpoint", required=True, help="the checkpoint that embedded it")
    search.add_argument("--image", action="store_true", help="the query is an image file")
    search.add_argument("--top-k", type=int, default=5)
    _add_device(search)
    search.add_argument("--json", action="store_true", help="print JSON")

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
        distributed={"auto": "auto", "yes": True, "no": False}[args.distributed],
        local_loss=args.local_loss,
        **columns,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # under torchrun, rank 0 reports for all
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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}


def _embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import ImageDecodeError, LiteClip

    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(2, "No such file or directory", str(source))
    model = LiteClip.load(args.checkpoint, device=args.device, precision=args.precision)
    skipped: list[tuple[str, str]] = []
    if source.is_dir():
        kind = "images"
        items = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        rows, kept = [], []
        for i in range(0, len(items), args.batch_size):
            chunk = items[i : i + args.batch_size]
            try:
                rows.append(model.encode_image(chunk))
                kept += chunk
            except (ImageDecodeError, OSError):  # find the bad ones, keep the rest
                for item in chunk:
                    try:
                        rows.append(model.encode_image(item))
                        kept.append(item)
                    except (ImageDecodeError, OSError) as error:
                        skipped.append((item, str(error)))
        items = kept
        embeddings = np.concatenate(rows) if rows else np.zeros((0, model.embed_dim), "float32")
    else:
        kind = "texts"
        items = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        embeddings = (
            model.encode_text(items) if items else np.zeros((0, model.embed_dim), "float32")
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embeddings)
    index = {"kind": kind, "checkpoint": str(args.checkpoint), "items": items}
    output.with_suffix(".json").write_text(json.dumps(index, indent=1))
    summary = {"output": str(output), "kind": kind, "rows": len(items), "skipped": skipped}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"embedded {len(items)} {kind} into {output} (index {output.with_suffix('.json')})")
        for item, why in skipped:
            print(f"skipped {item}: {why}", file=sys.stderr)
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import LiteClip

    index_path = Path(args.index)
    embeddings = np.load(index_path)
    meta = json.loads(index_path.with_suffix(".json").read_text())
    if len(meta["items"]) != len(embeddings):
        raise ValueError(
            f"{index_path}: the index lists {len(meta['items'])} items for "
            f"{len(embeddings)} embeddings"
        )
    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    model = LiteClip.load(args.checkpoint, device=args.device)
    query = model.encode_image(args.query) if args.image else model.encode_text(args.query)
    if query.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"{index_path} holds {embeddings.shape[1]}-d embeddings but the "
            f"checkpoint makes {query.shape[1]}-d ones: another model?"
        )
    scores = embeddings @ query[0]
    order = np.argsort(-scores, kind="stable")[: args.top_k]
    hits = [{"item": meta["items"][i], "score": float(scores[i])} for i in order]
    if args.json:
        print(json.dumps(hits))
    else:
        for hit in hits:
            print(f"{hit['score']:.4f}  {hit['item']}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.output, n_images=args.images, epochs=args.epochs, device=args.device)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        if (args.data is None) == (args.data_option is None):
            parser.error("train needs the data set once: DATA or --data DATA")
        args.data = args.data or args.data_option
    commands = {
        "predict": _predict,
        "train": _train,
        "evaluate": _evaluate,
        "embed": _embed,
        "search": _search,
        "demo": _demo,
    }
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
