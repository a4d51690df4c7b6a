"""The `liteclip` command line. Parsing and printing only: the work is done by the package.

The options of `train` and `evaluate` are made from the signatures and docstrings of
`liteclip.train` and `liteclip.evaluate` (whose defaults the core defines), so a flag cannot
drift from the API: each keyword argument becomes `--name-with-dashes`, with its default and
the help text of its docstring.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from typing import Any, Callable

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

#: Shorter spellings kept for flags the command line has always had.
_ALIASES = {"early_stopping_patience": ["--patience"]}


def _argument_docs(function: Callable) -> dict[str, str]:
    """`name: text` entries of a Google-style docstring's Args section, one line each."""
    doc = inspect.getdoc(function) or ""
    section = doc.split("Args:", 1)[1].split("\n\n", 1)[0] if "Args:" in doc else ""
    docs: dict[str, str] = {}
    for match in re.finditer(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", section, re.M | re.S):
        text = " ".join(match.group(2).split()).replace("``", "")
        docs[match.group(1)] = text.replace("%", "%%")
    return docs


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """`kind`, or None for the word "none"."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _flag_type(parameter: inspect.Parameter) -> Callable[[str], Any]:
    """The parser of a flag's value, from the argument's default or its annotation."""
    annotation = str(parameter.annotation)
    kind: Callable[[str], Any] = str
    if parameter.default is not None:
        kind = type(parameter.default)
    else:
        for name, number in (("int", int), ("float", float)):
            if re.search(rf"\b{name}\b", annotation):
                kind = number
    return _optional(kind) if "None" in annotation else kind


def add_api_options(
    parser: argparse.ArgumentParser, function: Callable, skip: tuple[str, ...] = ()
) -> list[str]:
    """Adds a flag for every keyword argument of `function` not in `skip`; returns their names.

    Booleans become `--flag` / `--no-flag`; arguments whose default is None take the word
    `none` too; enumerated options offer the core's own list of values. Each flag's
    destination is the argument's own name.
    """
    from ._liteclip import OPTION_CHOICES

    choices = OPTION_CHOICES.get(function.__name__, {})
    docs = _argument_docs(function)
    names = []
    for p in inspect.signature(function).parameters.values():
        if p.default is inspect.Parameter.empty or p.name in skip:
            continue
        flags = ["--" + p.name.replace("_", "-"), *_ALIASES.get(p.name, [])]
        help_text = docs.get(p.name, "")
        if isinstance(p.default, bool):
            parser.add_argument(
                *flags,
                dest=p.name,
                action=argparse.BooleanOptionalAction,
                default=p.default,
                help=help_text,
            )
        else:
            parser.add_argument(
                *flags,
                dest=p.name,
                type=_flag_type(p),
                default=p.default,
                choices=choices.get(p.name),
                metavar=None if p.name in choices else p.name.upper(),
                help=f"{help_text} (default: {p.default})",
            )
        names.append(p.name)
    return names


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N" (default: auto)'
    )


def _add_precision(parser: argparse.ArgumentParser) -> None:
    """--precision and --decode: how a loaded model computes and decodes."""
    from ._liteclip import OPTION_CHOICES

    parser.add_argument(
        "--precision",
        default="fp32",
        choices=OPTION_CHOICES["evaluate"]["precision"],
        help='"fp32" (exact), "bf16" (faster on GPUs and CPUs with fast bf16 units), "fp16" or '
        '"int8" (CPU: int8 linear layers, about 2x fp32 with AVX-512 VNNI, much slower without; '
        "see the Performance guide) "
        "(default: fp32)",
    )
    parser.add_argument(
        "--decode",
        default="exact",
        choices=OPTION_CHOICES["evaluate"]["decode"],
        help='"exact" (every pixel, as PIL) or "fast" (large JPEGs decoded at a reduced DCT '
        "scale) (default: exact)",
    )


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `ServeOptions`, with its default and help."""
    from ._liteclip import OPTION_CHOICES
    from .serve.options import option_fields

    for field in option_fields():
        flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
        shown = "" if field.default in (None, ()) else f" (default: {field.default})"
        kwargs: dict[str, Any] = {"default": field.default, "help": field.metadata["help"] + shown}
        if field.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.type in ("int", "float"):
            kwargs["type"] = int if field.type == "int" else float
        elif field.type.startswith("tuple"):
            kwargs.update(action="append", dest=field.name, default=None)
        if field.name in ("precision", "decode"):
            kwargs["choices"] = OPTION_CHOICES["evaluate"][field.name]
        parser.add_argument(flag, **kwargs)


def _version() -> str:
    from . import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteclip",
        description="liteclip: a small CLIP computed in Rust on libtorch.",
    )
    parser.add_argument("--version", action="version", version=f"liteclip {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (
        _register_predict,
        _register_train,
        _register_evaluate,
        _register_embed,
        _register_index,
        _register_search,
        _register_duplicates,
        _register_shard,
        _register_serve,
        _register_demo,
    ):
        register(sub)
    return parser


def _register_predict(sub: Any) -> None:
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
    _add_precision(predict)
    predict.add_argument("--top-k", type=int, default=5, help="labels to show (default: 5)")
    predict.add_argument(
        "--hypothesis-template",
        "--template",
        dest="hypothesis_template",
        default=None,
        help='text embedded for each label, with {} for the label (e.g. "a photo of a {}"); '
        "--template is its deprecated short name",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.set_defaults(run=_predict)


def _register_train(sub: Any) -> None:
    from .training import train as train_api

    train = sub.add_parser(
        "train",
        help="train a model on captioned images",
        description="Train a liteclip model contrastively on captioned images. Writes "
        "OUTPUT/best, OUTPUT/last and OUTPUT/metrics.jsonl. Every option of liteclip.train is a "
        "flag here, with the same default.",
    )
    train.add_argument(
        "data",
        nargs="*",
        help="Flickr8k-layout folder (Images/ + captions.txt), a CSV of image,caption, or "
        "WebDataset shards (.tar files, a pattern such as 'shards/{00000..00009}.tar', a glob, "
        "or a folder of .tar files)",
    )
    train.add_argument(
        "--data", dest="data_option", metavar="DATA", action="append", help="the same as DATA"
    )
    train.set_defaults(
        api_options=add_api_options(train, train_api, skip=("resume", "distributed"))
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in OUTPUT (or from CHECKPOINT, a run's last/ folder)",
    )
    train.add_argument(
        "--distributed",
        default="auto",
        choices=["auto", "yes", "no"],
        help="data-parallel over torch.distributed (auto: when torchrun started several processes)",
    )
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(run=_train)


def _register_evaluate(sub: Any) -> None:
    from .training import evaluate as evaluate_api

    evaluate = sub.add_parser(
        "evaluate",
        help="retrieval metrics on captioned data, or zero-shot accuracy on a class folder",
        description="Evaluate a checkpoint: image-text retrieval (R@1/5/10, loss) on a "
        "captioned data set, or zero-shot classification on a folder with one sub-folder "
        "per class (--zero-shot). Every option of liteclip.evaluate is a flag here.",
    )
    evaluate.add_argument("checkpoint", help="checkpoint folder or file")
    evaluate.set_defaults(api_options=add_api_options(evaluate, evaluate_api, skip=("templates",)))
    evaluate.add_argument(
        "--zero-shot",
        metavar="FOLDER",
        default=None,
        help="class-per-sub-folder image folder (the same as --task zero-shot --data FOLDER)",
    )
    evaluate.add_argument(
        "--templates",
        "--template",
        dest="templates",
        action="append",
        default=None,
        help='prompt template with {} for the class name (repeatable; "ensemble" for 18 '
        'built-in prompts; default "a photo of a {}."); --template is its deprecated '
        "singular",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(run=_evaluate)


def _register_embed(sub: Any) -> None:
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
    _add_precision(embed)
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.set_defaults(run=_embed)


def _register_index(sub: Any) -> None:
    from ._liteclip import INDEX_DEFAULTS as DEFAULTS
    from .watching import RESCAN_EVERY

    index = sub.add_parser(
        "index",
        help="index a folder of photos for search (the first run builds, later runs update)",
        description="Embed every image under ROOT (recursively) into the index folder INDEX. "
        "Later runs embed only new and changed files and drop deleted ones; the index is "
        "committed a chunk at a time, so an interrupted run loses little and the next one "
        "continues. Unreadable files are skipped and listed. Under torchrun, ranks embed "
        "disjoint shares of the files and rank 0 writes the index.",
    )
    index.add_argument("root", help="folder of photos")
    index.add_argument("--index", required=True, help="the index folder (e.g. LIB.lcx)")
    index.add_argument(
        "--checkpoint",
        default=None,
        help="the model (needed to build; later runs use the recorded one, and one given "
        "must hold the same weights)",
    )
    index.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    _add_device(index)
    _add_precision(index)
    index.add_argument(
        "--lock-wait",
        type=float,
        default=DEFAULTS["lock_wait"],
        help="seconds to wait for another process writing the index (default: %(default)s)",
    )
    index.add_argument(
        "--commit-every",
        type=int,
        default=DEFAULTS["commit_every"],
        help="files per committed chunk: an interrupted run loses at most this many "
        "(default: %(default)s)",
    )
    change = index.add_mutually_exclusive_group()
    change.add_argument(
        "--add",
        nargs="+",
        metavar="PATH",
        default=None,
        help="index only these files or folders now (also ones taken out with --remove); "
        "paths are absolute or relative to the working folder, under ROOT",
    )
    change.add_argument(
        "--remove",
        nargs="+",
        metavar="PATH",
        default=None,
        help="take these files or folders out of the index and keep them out of later "
        "updates; a path that is not in the index is an error and nothing is removed",
    )
    change.add_argument(
        "--watch",
        action="store_true",
        help="after the update, stay running and keep the index current: new, changed, "
        "deleted and renamed photos are applied within seconds (file events, and a rescan "
        "every --rescan-every seconds); Ctrl-C or SIGTERM commits and exits 0",
    )
    index.add_argument(
        "--rescan-every",
        type=float,
        default=RESCAN_EVERY,
        metavar="SECONDS",
        help="with --watch, seconds between rescans of ROOT when no file event came "
        "(default: %(default)s)",
    )
    index.add_argument(
        "--json", action="store_true", help="print the report (each update's, with --watch) as JSON"
    )
    index.set_defaults(run=_index)


def _register_search(sub: Any) -> None:
    search = sub.add_parser(
        "search",
        help="search an index of photos with words, images, or both",
        description="Find the indexed photos closest to a query, using the checkpoint "
        "recorded in the index. A query is one or more terms joined by + and - (each a "
        "separate word): a term that names an existing file is an image, anything else is "
        "text, and W:TERM weights a term, e.g. "
        '`liteclip search "2:a dog" + beach.jpg - people --index LIB.lcx`. '
        "(A .npy file from `liteclip embed` given as --index is ranked exactly, with "
        "--checkpoint.)",
    )
    search.add_argument("query", nargs="*", default=[], help="query terms, joined by + and -")
    search.add_argument("--index", required=True, help="index folder from `liteclip index`")
    search.add_argument(
        "--image",
        nargs="?",
        const=True,
        default=None,
        metavar="IMAGE",
        help="add this image as a term (`QUERY --image` reads QUERY as an image path)",
    )
    search.add_argument(
        "--checkpoint",
        default=None,
        help="optional: must hold the weights that built the index",
    )
    search.add_argument("--top-k", type=int, default=10, help="results (default: %(default)s)")
    search.add_argument(
        "--offset", type=int, default=0, help="skip this many results: the next page"
    )
    search.add_argument("--after", metavar="YYYY-MM-DD", help="taken on or after this day")
    search.add_argument("--before", metavar="YYYY-MM-DD", help="taken on or before this day")
    search.add_argument(
        "--under", metavar="FOLDER", help="only photos in this folder (relative to the root)"
    )
    search.add_argument("--camera", help="only photos whose camera make or model contains this")
    search.add_argument(
        "--min-score", type=float, default=None, help="leave out results below this cosine"
    )
    search.add_argument(
        "--sort",
        choices=["score", "date"],
        default="score",
        help="score: closest first (default); date: every photo above --min-score, newest first",
    )
    _add_device(search)
    _add_precision(search)
    output = search.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print JSON: path, score, taken, camera, width, height, ... per result",
    )
    output.add_argument(
        "--paths-only", action="store_true", help="print one path per line and nothing else"
    )
    search.set_defaults(run=_search)


def _register_shard(sub: Any) -> None:
    shard = sub.add_parser(
        "shard",
        help="write a captioned data set (folder or CSV) as WebDataset tar shards",
        description="Write SRC (a Flickr8k-layout folder or a CSV of image paths and captions) "
        "as WebDataset shards OUT/00000.tar, ...: {key}.jpg|png|webp + {key}.txt (first "
        "caption) + {key}.json (all captions), as img2dataset writes them.",
    )
    shard.add_argument("source", metavar="SRC")
    shard.add_argument("output", metavar="OUT")
    shard.add_argument("--samples-per-shard", type=int, default=1000)
    shard.add_argument("--image-column", default="image")
    shard.add_argument("--caption-column", default="caption")
    shard.add_argument("--images-dir", default=None)
    shard.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the images in a seeded random order, so that each shard holds a bit of "
        "everything even when the source is sorted by class (--no-shuffle keeps the source's "
        "order) (default: shuffle)",
    )
    shard.add_argument("--seed", type=int, default=0, help="the shuffle's seed (default: 0)")
    shard.set_defaults(run=_shard)


def _register_duplicates(sub: Any) -> None:
    from ._liteclip import DUPLICATE_THRESHOLD

    duplicates = sub.add_parser(
        "duplicates",
        help="find groups of near-duplicate photos in an index",
        description="Group indexed photos whose embeddings are within a cosine threshold of "
        "each other (resized, recompressed, slightly cropped copies), each group with the "
        "photo to keep (the largest in pixels, then the oldest). Deletes nothing.",
    )
    duplicates.add_argument("--index", required=True, help="index folder from `liteclip index`")
    duplicates.add_argument(
        "--threshold",
        type=float,
        default=DUPLICATE_THRESHOLD,
        help="cosine at or above which two photos are copies (default: %(default)s)",
    )
    duplicates.add_argument(
        "--json", action="store_true", help='print {"groups": [{"keep": ..., "duplicates": [...]}]}'
    )
    duplicates.set_defaults(run=_duplicates)


def _register_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="an HTTP service and web page: zero-shot prediction, embeddings, photo search",
        description="Serve /predict, /embed/text, /embed/image, /search, /duplicates and /thumb "
        "(JSON), OpenAI's /v1/embeddings, /healthz, /readyz and /metrics (Prometheus), and a "
        "web page at /, batching concurrent requests into one model call. Needs "
        "`pip install 'liteclip[serve]'`.",
    )
    _add_serve_options(serve)
    serve.set_defaults(run=_serve)


def _register_demo(sub: Any) -> None:
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
    demo.set_defaults(run=_demo)


def _predict(args: argparse.Namespace) -> int:
    from . import ZeroShotPipeline

    pipeline = ZeroShotPipeline(
        args.checkpoint, device=args.device, precision=args.precision, decode=args.decode
    )
    ranking = pipeline.predict(
        args.image, args.labels, top_k=args.top_k, hypothesis_template=args.hypothesis_template
    )
    if args.json:
        print(json.dumps([{"label": label, "probability": p} for label, p in ranking]))
    else:
        for label, p in ranking:
            print(f"{label}: {p * 100:.2f}%")
    return EXIT_OK


def train_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `liteclip.train` that a parsed `liteclip train` stands for."""
    kwargs = {name: getattr(args, name) for name in args.api_options}
    kwargs["resume"] = args.resume
    kwargs["distributed"] = {"auto": "auto", "yes": True, "no": False}[args.distributed]
    if args.json:
        kwargs["progress"] = False
    return kwargs


def evaluate_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `liteclip.evaluate` that a parsed `liteclip evaluate` stands
    for."""
    kwargs = {name: getattr(args, name) for name in args.api_options}
    kwargs["templates"] = args.templates
    if args.zero_shot:
        kwargs.update(data=args.zero_shot, task="zero-shot")
    return kwargs


def _train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .training import train

    result = train(args.data, **train_arguments(args))
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

    metrics = evaluate(args.checkpoint, **evaluate_arguments(args))
    if args.json:
        print(json.dumps(metrics))
    elif "top1" in metrics:
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


def _embed(args: argparse.Namespace) -> int:
    from . import LiteClip

    model = LiteClip.load(
        args.checkpoint, device=args.device, precision=args.precision, decode=args.decode
    )
    summary = model.embed_to_file(
        args.source, args.output, batch_size=args.batch_size, checkpoint=str(args.checkpoint)
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"embedded {summary['rows']} {summary['kind']} into {summary['output']} "
            f"(index {summary['index']})"
        )
        for item, why in summary["skipped"]:
            print(f"skipped {item}: {why}", file=sys.stderr)
    return EXIT_OK


class _IndexProgress:
    """A progress bar over the files an update embeds (images/s and time left), on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state["to_embed"], unit="img", desc="indexing", file=sys.stderr)
        self.bar.update(state["done"] - self.bar.n)
        self.bar.set_postfix(skipped=state["skipped"], refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _index(args: argparse.Namespace) -> int:
    from .indexing import index_folder, open_index_of

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    model = dict(device=args.device, precision=args.precision, decode=args.decode)
    if args.remove is not None:
        index = open_index_of(args.root, args.index, args.checkpoint, **model)
        removed = index.remove(args.remove, lock_wait=args.lock_wait)
        if args.json:
            print(json.dumps({"removed": removed, "index": str(args.index)}))
        else:
            print(f"{removed} photos taken out of {args.index}")
        return EXIT_OK
    if args.watch:
        return _index_and_watch(args, model)
    progress = _IndexProgress(not args.json and sys.stderr.isatty())
    options = dict(
        batch_size=args.batch_size,
        progress=progress if progress.enabled else None,
        lock_wait=args.lock_wait,
        commit_every=args.commit_every,
    )
    try:
        if args.add is not None:
            index = open_index_of(args.root, args.index, args.checkpoint, **model)
            report = index.add(args.add, **options)
        else:
            report = index_folder(args.root, args.index, args.checkpoint, **model, **options)
    finally:
        progress.close()
    if report is not None:  # None on the ranks other than 0 under torchrun
        _print_index_report(report, args.json)
    return EXIT_OK


def _index_and_watch(args: argparse.Namespace, model: dict[str, Any]) -> int:
    """`liteclip index --watch`: the update (or build), then every change as it comes, until
    Ctrl-C or SIGTERM, which stop the update in progress after its batch (committed)."""
    import signal
    import threading
    from pathlib import Path

    from . import Index
    from .indexing import index_folder
    from .watching import FolderEvents, keep_current, stopping

    if not args.rescan_every > 0:
        raise ValueError("--rescan-every must be a positive number of seconds")
    if args.checkpoint is None and not Index.exists(args.index):
        raise ValueError(f"{args.index} is not an index yet: give --checkpoint to build it")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if not Path(args.root).is_dir():
        raise FileNotFoundError(f"{args.root} is not a folder")
    # Watching starts first: what changes during the first update is applied after it.
    events = FolderEvents(args.root, args.index, stop).start()
    options = dict(
        batch_size=args.batch_size, lock_wait=args.lock_wait, commit_every=args.commit_every
    )
    try:
        report = index_folder(
            args.root, args.index, args.checkpoint, **model, progress=stopping(stop), **options
        )
    except KeyboardInterrupt:
        if not stop.is_set():
            raise
        report = None
    if report is not None:
        _print_index_report(report, args.json)
    if not stop.is_set():
        index = Index.open(args.index, args.checkpoint, **model)
        if events.failure:
            print(
                f"file events are not available ({events.failure}): rescanning every "
                f"{args.rescan_every:g} s",
                file=sys.stderr,
            )
        print(f"watching {index.root} for changes (Ctrl-C to stop)", file=sys.stderr, flush=True)

        def changed(update: dict[str, Any]) -> None:
            if args.json or update["embedded"] or update["removed"] or update["skipped"]:
                _print_index_report(update, args.json)
                sys.stdout.flush()

        keep_current(index, events, rescan_every=args.rescan_every, on_update=changed, **options)
    events.join()
    print("stopped: the index is committed", file=sys.stderr)
    return EXIT_OK


def _print_index_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    by = f" by {report['ranks']} ranks" if "ranks" in report else ""
    print(
        f"{report['size']} photos indexed in {report['index']}{by}: "
        f"{report['embedded']} embedded, "
        f"{report['removed']} removed, {report['unchanged']} unchanged, "
        f"{len(report['skipped'])} skipped ({report['seconds']:.1f} s)"
    )
    for item in report["skipped"]:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)


def _search_terms(args: argparse.Namespace) -> list[Any]:
    """The query's terms: words joined by + and -, an existing file an image."""
    import os
    from pathlib import Path

    from . import parse_query

    if args.image is True:
        # `liteclip search PHOTO.jpg --image`: the query is an image path.
        if len(args.query) != 1:
            raise ValueError("`QUERY --image` takes one image path as QUERY")
        return [Path(args.query[0])]
    terms: list[Any] = []
    if args.query:
        for text, weight in parse_query(args.query):
            path = os.path.expanduser(text)
            term: Any = Path(path) if os.path.isfile(path) else text
            terms.append(term if weight == 1.0 else (term, weight))
    if args.image is not None:
        terms.append(Path(args.image))
    if not terms:
        raise ValueError("give a query: words to search for, an image path, or --image IMAGE")
    return terms


def _search(args: argparse.Namespace) -> int:
    from . import Index

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    if args.offset < 0:
        raise ValueError("--offset must be 0 or more")
    terms = _search_terms(args)
    if str(args.index).endswith(".npy"):
        return _search_npy(args, terms)
    index = Index.open(
        args.index,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        decode=args.decode,
    )
    hits = index.search(
        terms if len(terms) > 1 else terms[0],
        k=args.top_k,
        offset=args.offset,
        after=args.after,
        before=args.before,
        under=args.under,
        camera=args.camera,
        min_score=args.min_score,
        sort=args.sort,
    )
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits]))
    elif args.paths_only:
        for hit in hits:
            print(hit.path)
    else:
        for hit in hits:
            day = (hit.taken or "")[:10]
            print(f"{hit.score:.4f}  {day:10}  {hit.path}")
    return EXIT_OK


def _duplicates(args: argparse.Namespace) -> int:
    from . import Index

    groups = Index.open(args.index).duplicates(threshold=args.threshold)
    if args.json:
        print(json.dumps({"groups": groups}))
        return EXIT_OK
    for group in groups:
        print(f"keep       {group['keep']}")
        for path in group["duplicates"]:
            print(f"duplicate  {path}")
    copies = sum(len(g["duplicates"]) for g in groups)
    print(f"{len(groups)} groups, {copies} duplicates", file=sys.stderr)
    return EXIT_OK


def _search_npy(args: argparse.Namespace, terms: list[Any]) -> int:
    """Exact search over an embedding file from `liteclip embed` (the older way)."""
    from pathlib import Path

    import numpy as np

    from . import LiteClip

    filters = [args.after, args.before, args.under, args.camera, args.min_score]
    plain = len(terms) == 1 and all(f is None for f in filters)
    if not plain or args.offset or args.sort != "score":
        raise ValueError(
            "a .npy file from `liteclip embed` is searched with one text or image and "
            "--top-k only; build an index (`liteclip index`) for query terms and filters"
        )
    query = terms[0]
    if args.checkpoint is None:
        raise ValueError("searching a .npy file needs --checkpoint (an index records its own)")
    index_path = Path(args.index)
    embeddings = np.load(index_path)
    meta = json.loads(index_path.with_suffix(".json").read_text())
    if len(meta["items"]) != len(embeddings):
        raise ValueError(
            f"{index_path}: the index lists {len(meta['items'])} items for "
            f"{len(embeddings)} embeddings"
        )
    model = LiteClip.load(
        args.checkpoint, device=args.device, precision=args.precision, decode=args.decode
    )
    vector = model.encode_image(query) if isinstance(query, Path) else model.encode_text(query)
    if vector.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"{index_path} holds {embeddings.shape[1]}-d embeddings but the "
            f"checkpoint makes {vector.shape[1]}-d ones: another model?"
        )
    scores = embeddings @ vector[0]
    order = np.argsort(-scores, kind="stable")[: args.top_k]
    hits = [{"item": meta["items"][i], "score": float(scores[i])} for i in order]
    if args.paths_only:
        for hit in hits:
            print(hit["item"])
    elif args.json:
        print(json.dumps(hits))
    else:
        for hit in hits:
            print(f"{hit['score']:.4f}  {hit['item']}")
    return EXIT_OK


def _shard(args: argparse.Namespace) -> int:
    from .datasets import write_shards

    paths = write_shards(
        args.source,
        args.output,
        samples_per_shard=args.samples_per_shard,
        image_column=args.image_column,
        caption_column=args.caption_column,
        images_dir=args.images_dir,
        shuffle=args.shuffle,
        seed=args.seed,
    )
    last = len(paths) - 1
    width = len(paths[-1].stem) if paths else 5
    pattern = os.path.join(args.output, f"{{{0:0{width}d}..{last:0{width}d}}}.tar")
    print(f"wrote {len(paths)} shards: {pattern}")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve
    from .serve.options import ServeOptions, option_fields

    values = {f.name: getattr(args, f.name) for f in option_fields()}
    values["allowed_hosts"] = tuple(values["allowed_hosts"] or ())
    # A key in the environment stays out of `ps` and shell history.
    values["api_key"] = values["api_key"] or os.environ.get("LITECLIP_API_KEY") or None
    return serve(ServeOptions(**values))


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.output, n_images=args.images, epochs=args.epochs, device=args.device)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from . import LiteClipError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        if bool(args.data) == bool(args.data_option):
            parser.error("train needs the data set once: DATA or --data DATA")
        data = args.data or args.data_option
        args.data = data[0] if len(data) == 1 else data
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"liteclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except (LiteClipError, OSError, ValueError, TypeError, RuntimeError, ImportError) as error:
        print(f"liteclip {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
