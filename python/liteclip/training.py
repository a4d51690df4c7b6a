"""`train` and `evaluate`: argument documentation, progress display and result types.

The training loop, data loading and evaluation run in Rust (`liteclip._liteclip`); this module
passes arguments through and draws progress bars.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from . import _liteclip, hub
from .distributed import ProcessGroup, rank_device, requested

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        best_checkpoint: folder of the model with the lowest validation loss (``None`` if no
            epoch completed); load it with ``LiteClip.load`` or ``ZeroShotPipeline``.
        last_checkpoint: folder of the model after the last completed epoch, with the state
            ``resume=True`` continues from.
        history: one dict per epoch: ``epoch``, ``step``, ``train_loss``, ``lr``,
            ``logit_scale``, ``seconds``, ``pairs_per_second``, ``val_loss``,
            ``val_i2t_r1`` ... ``val_t2i_r10``, ``zero_shot_top1``, ``zero_shot_top5`` (with
            ``zero_shot_data``), ``skipped_images`` (the same lines as the run's
            ``metrics.jsonl``).
        stopped_early: early stopping ended the run.
        interrupted: the run was stopped (Ctrl-C) before its last epoch.
        skipped_images: ``(path, reason)`` of images that could not be decoded (in shards:
            ``shard.tar/key``).
        malformed_rows, missing_images: rows of the captions file that were skipped.
        train_images, val_images: images on each side of the split (shards: the samples
            counted from the shards' member names, 0 with ``samples_per_epoch``).
        samples_without_caption, samples_without_image: shard samples skipped for lacking
            their caption or their image (over the shards this process read).
        truncated_shards: shards that end inside a member (damaged or cut short; the samples
            before the damage were used).
        device, precision: where and in what arithmetic the run trained.

    The fields are those of the Rust core's result (``src/train/report.rs``); a test keeps the
    two in step.
    """

    best_checkpoint: str | None
    last_checkpoint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    malformed_rows: int = 0
    missing_images: int = 0
    train_images: int = 0
    val_images: int = 0
    samples_without_caption: int = 0
    samples_without_image: int = 0
    truncated_shards: list[str] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"

    @classmethod
    def _from_core(cls, raw: dict[str, Any]) -> TrainResult:
        raw["skipped_images"] = [tuple(x) for x in raw["skipped_images"]]
        return cls(**raw)


class _Progress:
    """Receives progress from the Rust training loop: a bar per epoch (tqdm, which draws in a
    terminal and in Jupyter), and a summary line per epoch."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm

            tqdm.write(text)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(text, flush=True)

    def epoch_start(self, args) -> None:
        epoch, epochs, steps = args
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True)

    def step(self, info: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        postfix = {"pairs/s": f"{info['pairs_per_second']:.1f}"}
        if info.get("loss") is not None:
            postfix = {"loss": f"{info['loss']:.4f}", **postfix}
        self.bar.set_postfix(postfix, refresh=False)

    def epoch_end(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        line = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
        if record.get("val_loss") is not None:
            line += (
                f", val loss {record['val_loss']:.4f}, "
                f"R@1 image->text {record['val_i2t_r1']:.3f} text->image {record['val_t2i_r1']:.3f}"
            )
        if record.get("zero_shot_top1") is not None:
            line += (
                f", zero-shot top-1 {record['zero_shot_top1']:.3f} "
                f"top-5 {record['zero_shot_top5']:.3f}"
            )
        line += f", {record['pairs_per_second']:.1f} pairs/s"
        self._write(line)

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(
    data: PathLike | Sequence[PathLike],
    output: PathLike = "runs/liteclip",
    model: str = "liteclip",
    epochs: int = 5,
    batch_size: int = 64,
    lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    schedule: str = "cosine",
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    init: PathLike | None = None,
    image_weights: PathLike | None = None,
    text_weights: PathLike | None = None,
    early_stopping_patience: int | None = 2,
    progress: bool = True,
    resume: bool | PathLike = False,
    augment: bool = False,
    image_column: str = "image",
    caption_column: str = "caption",
    images_dir: PathLike | None = None,
    prefetch: int = 4,
    max_steps_per_epoch: int | None = None,
    skip_nonfinite: bool = False,
    distributed: bool | str = "auto",
    local_loss: bool = False,
    distributed_timeout: float = 600.0,
    accum_steps: int = 1,
    checkpoint_every: int | None = None,
    zero_shot_data: PathLike | None = None,
    zero_shot_templates: list[str] | str | None = None,
    monitor: str = "val_loss",
    val_data: PathLike | None = None,
    workers: int = 2,
    shuffle_buffer: int = 1000,
    samples_per_epoch: int | None = None,
    decode: str = "exact",
    lock_image: bool = False,
    lock_image_unlocked_stages: int = 0,
    lock_text: bool = False,
    lock_text_unlocked_layers: int = 0,
) -> TrainResult:
    """Trains a liteclip model contrastively on captioned images.

    Args:
        data: a folder in the Flickr8k layout (``Images/`` and ``captions.txt``, a CSV with
            header ``image,caption``, several rows per image), or any CSV file of image paths
            and captions (column names: ``image_column``, ``caption_column``; paths relative to
            ``images_dir``, by default ``Images/`` beside the CSV or the CSV's folder).
            Or WebDataset tar shards as img2dataset writes them (``{key}.jpg|jpeg|png|webp``
            with ``{key}.txt`` and/or ``{key}.json``): a ``.tar`` file, a brace pattern
            (``"shards/{00000..00127}.tar"``), a glob, a folder of ``.tar`` files, or a list of
            them. Shards are streamed (memory does not grow with the data set), dealt to
            ranks x ``workers`` streams, read in an order shuffled by seed and epoch through a
            shuffle buffer (``shuffle_buffer``); each sample trains once per epoch with one of
            its captions. Samples without
            an image or a caption, and undecodable images, are skipped and counted.
        output: run folder; receives ``best/``, ``last/`` and ``metrics.jsonl``.
        model: ``"liteclip"`` (convnext_tiny + bert-mini, 224 px), ``"liteclip-nano"`` (small
            widths, 64 px, trains on a CPU in minutes), or the path of a config JSON.
        epochs: passes over the training captions (every caption once per epoch; shards: every
            sample once). 5, the original's.
        batch_size: pairs per step (at least 2); no image appears twice in a batch. 64, the
            original's: each pair's negatives are the batch's other 63, and fewer make a weaker
            contrastive signal (see ``accum_steps`` for more on small memory).
        lr: peak learning rate. ``None`` picks by how the towers start: 2e-4 (the original
            liteCLIP's) when they start from trained weights (``init``, ``image_weights`` or
            ``text_weights``), 2e-3 when they start from random weights (what trains
            ``liteclip-nano`` from scratch fastest, with the warm-up below).
        optimizer: ``"adam"`` (the original's, the default) or ``"adamw"`` (decoupled weight
            decay).
        weight_decay: applied to weight matrices and embeddings only; 0, the original's.
        warmup_steps: steps of linear warm-up from 0 to ``lr``. ``None``: a tenth of the run's
            steps, at most 10,000 (open_clip's default). From scratch, a high rate from the
            first step collapses the model (the loss stays at ln(batch_size) and nothing is
            learned); a warm-up avoids it.
        schedule: after the warm-up, ``"cosine"`` (decay to 0 at the last step, as open_clip
            and most CLIP training do: the default, because it both trains from scratch and
            ends on a low rate) or ``"constant"``. A run whose loss is still about
            ln(contrastive batch) a quarter of the way in (and at least 100 steps in, 50 after
            the warm-up) says so: a warning on the progress line and in the epoch's
            ``warnings`` (history and ``metrics.jsonl``), with what to try.
        val_fraction: share of *images* held out for validation (0.2: enough images for a
            stable validation loss on sets of a few thousand); all captions of an image stay on
            one side (the original split caption rows, leaking images).
        seed: makes the split, order, augmentation, dropout and initialisation repeatable.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"auto"`` (fp32 on CPU, bf16 on CUDA), ``"fp32"``, ``"bf16"``, or
            ``"fp16"`` (with dynamic loss scaling). Weights are always kept in fp32.
        init: start from a checkpoint (liteclip folder or the original liteCLIP ``.pt``), or a
            liteclip model on the Hugging Face Hub (``"hf-hub:owner/name"``).
        image_weights: timm ConvNeXt weights for the image tower: a ``.pth``/``.safetensors``
            file, or a Hub id such as ``"timm/convnext_tiny.in12k_ft_in1k"`` (needs
            ``pip install 'liteclip[hub]'``; fetched into the Hugging Face cache).
        text_weights: Hugging Face BERT weights for the text tower: a folder or file, or a Hub
            id such as ``"google/bert_uncased_L-4_H-256_A-4"``.
        early_stopping_patience: stop after this many epochs without a better validation
            loss (2: one bad epoch can be noise, two in a row rarely are); ``None`` disables
            it.
        progress: draw a progress bar per epoch (loss, pairs/s) and an epoch summary.
        resume: ``True`` continues the run in ``output`` from its ``last/`` checkpoint
            (optimizer state, step and schedule included, ending with the same weights as an
            unbroken run); a path continues from that checkpoint folder. Without it, an
            existing run in ``output`` is an error rather than overwritten. Options that
            define the run must be those it started with, or resuming is a ``ValueError``
            naming the option: ``model``, ``init``, ``image_weights``, ``text_weights``,
            ``data``, ``val_data``, the CSV columns and ``images_dir``, the locks, and, where
            the data is split, ``val_fraction`` and ``seed``; inside an epoch also ``seed``
            and the contrastive batch (``batch_size`` x ``accum_steps`` x processes). Others
            may change (``epochs``: with the cosine schedule, its decay is then spread over the
            new number of steps from the next step on).
        augment: random resized crops (scale 0.5-1) instead of the center crop.
        image_column: CSV column of image paths.
        caption_column: CSV column of captions.
        images_dir: folder the CSV's image paths are relative to.
        prefetch: batches decoded ahead of the device, on worker threads.
        max_steps_per_epoch: cap on steps per epoch (quick trials, benchmarks).
        skip_nonfinite: a batch whose loss is NaN or infinite is skipped and counted (in the
            history's ``nonfinite_skipped``) instead of stopping the run with an error. Either
            way no non-finite update reaches the weights that are saved.
        distributed: data-parallel training over ``torch.distributed`` in a process that
            torchrun started (``torchrun --nproc_per_node=N -m liteclip train ...``, or several
            machines with torchrun's ``--nnodes``/``--node_rank``/``--master_addr``). ``"auto"``
            (the default) turns it on when ``WORLD_SIZE > 1``. ``batch_size`` is then *per
            process*: each step trains on one global contrastive batch of
            ``WORLD_SIZE * batch_size`` pairs (embeddings are all-gathered and the gradient flows
            back to every rank, as one process with the whole batch would compute), and each
            epoch's global batches are those of one process with that batch size. Each process
            uses ``cuda:LOCAL_RANK`` on a GPU machine (NCCL) or the CPU (gloo). Rank 0 alone
            validates (over the whole validation set, in batches of the global size), prints and
            writes ``output``; every rank returns the same history. All ranks must see ``data``
            and, to resume, ``output`` at the same path.
        local_loss: with ``distributed``, each rank computes only its own rows of the
            similarity matrix against all columns (open_clip's ``--local-loss``): the same
            gradient for a ``WORLD_SIZE`` times smaller loss computation.
        distributed_timeout: seconds a collective may wait before failing, when liteclip joins
            the process group itself. A rank that dies is named in the others' error
            (``DistributedError``) within ``LITECLIP_HEARTBEAT_TIMEOUT`` seconds (30 by default).
        accum_steps: gradient caching (GradCache, open_clip's ``--accum-freq``): each step
            trains on one contrastive batch of ``accum_steps * batch_size`` pairs (per rank)
            while the towers hold only ``batch_size`` at once. A first pass embeds the whole
            batch without autograd graphs, the loss and its gradient with respect to the
            embeddings are computed over all of it, then each slice of ``batch_size`` is
            embedded again with graphs and back-propagated from its part of that gradient: the
            gradient of the big batch, for about 1.3x the compute.
        checkpoint_every: also save ``last/`` every this many steps inside an epoch (atomically,
            as at epoch ends), so that a crash loses at most that many steps: ``resume=True``
            then continues inside the epoch, and the run ends with the same weights as an
            unbroken one. ``None``: at epoch ends only.
        zero_shot_data: an ImageFolder (one sub-folder per class, named by its class) that is
            classified zero-shot at the end of every epoch, as open_clip checks ImageNet-val:
            top-1 and top-5 accuracy go into the history, ``metrics.jsonl`` and the progress
            line (``zero_shot_top1``, ``zero_shot_top5``).
        zero_shot_templates: its prompts, as ``evaluate``'s ``templates``: one (``"a photo of
            a {}."`` when ``None``), a list whose embeddings are averaged, or ``"ensemble"``.
        monitor: what picks ``best/`` and drives early stopping: ``"val_loss"`` (lower is
            better) or ``"zero_shot_top1"`` (higher is better; needs ``zero_shot_data``).
        val_data: a separate validation set, in the same layouts as ``data`` (and read with the
            same CSV options). ``data`` is then trained on whole and ``val_fraction`` is not
            used; ``evaluate(checkpoint, split="val")`` later evaluates on ``val_data``. Shards
            are never split: with shard ``data``, ``val_data`` is the only validation set.
        workers: shard data: streams per process, each reading its own shards in a thread
            (images are decoded on all cores either way). A resume inside an epoch continues
            exactly with the same ``workers`` and number of processes.
        shuffle_buffer: shard data: samples each stream holds in its shuffle buffer (as
            webdataset's ``shuffle(n)``): the buffer is filled from sixteen of the stream's shards
            at once, and each sample trained on is drawn from it at random. Memory holds about
            ``workers * (shuffle_buffer + 110)`` encoded samples. A resume inside an epoch reads
            the shards again from the epoch's start to rebuild the buffers exactly (without
            decoding the samples already trained on).
        samples_per_epoch: shard data: pairs per epoch over all processes (open_clip's
            ``--train-num-samples``); a stream that reaches the end of its shards starts them
            again, in a new order. ``None``: an epoch is one pass over the shards (counted from
            their tar headers at start; processes whose shards end first pad with no pairs).
        decode: ``"exact"`` (every pixel, as PIL) or ``"fast"``: large JPEGs (phone photos) are
            decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, keeping at least 1.5 times the
            resolution the crop is resized to (see ``LiteClip.load``).
        lock_image: lock the image backbone (LiT, open_clip's ``--lock-image``): its weights
            keep their starting values (get no gradient, no optimizer state and no weight
            decay), it runs in eval mode, and no backward pass goes through it. Its projection
            head and the temperature still train. The small-data recipe with a pretrained
            image tower (``image_weights`` or ``init``): with few pairs, training it would
            forget more than it learns.
        lock_image_unlocked_stages: with ``lock_image``, the last this many ConvNeXt stages
            (and the final norm) still train (0: the whole backbone is locked).
        lock_text: lock the text backbone in the same way (embeddings and layers; the
            projection head still trains).
        lock_text_unlocked_layers: with ``lock_text``, the last this many BERT layers still
            train.

    Returns:
        A :class:`TrainResult`. Images that cannot be decoded are skipped and counted, not
        fatal. Ctrl-C stops at the next step; the last completed epoch's checkpoint stays.
    """
    # Every argument but the three below is a core option, passed on as it is: the core holds
    # the defaults and checks the values (tests/test_options.py keeps this signature in step).
    options = {k: v for k, v in locals().items() if k not in _PYTHON_ONLY}
    if isinstance(zero_shot_templates, str):
        options["zero_shot_templates"] = [zero_shot_templates]
    # Hub ids become files in the Hugging Face cache (fetched unless HF_HUB_OFFLINE is set).
    for option in ("image_weights", "text_weights"):
        options[option] = hub.tower_weights(option, options[option])
    if init is not None and os.fspath(init).startswith(hub.PREFIX):
        options["init"] = hub.model_folder(os.fspath(init))
    group = None
    if requested(distributed):
        options["device"] = rank_device(device)
        group = ProcessGroup(options["device"], distributed_timeout)
        # One progress display per run, not one per process.
        progress = progress and group.rank == 0
    reporter = _Progress(progress)
    succeeded = False
    try:
        raw = _liteclip.train_model(options, reporter, collectives=group)
        # An interrupted rank may leave while others are mid-step: no closing barrier then.
        succeeded = not raw["interrupted"]
    finally:
        reporter.close()
        if group is not None:
            group.close(succeeded)
    return TrainResult._from_core(raw)


#: Arguments of `train` that the Python layer handles itself (display, process group).
_PYTHON_ONLY = ("progress", "distributed", "distributed_timeout")


def evaluate(
    checkpoint: PathLike,
    data: PathLike | None = None,
    split: str | None = None,
    task: str = "retrieval",
    templates: list[str] | str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "fp32",
    val_fraction: float | None = None,
    seed: int | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    images_dir: PathLike | None = None,
    decode: str = "exact",
) -> dict[str, Any]:
    """Evaluates a checkpoint.

    ``task="retrieval"`` (on a captioned data set, as ``train`` reads them): image->text and
    text->image recall at 1, 5 and 10 (all captions of an image count as correct), median
    ranks, and the contrastive ``loss``.

    ``task="zero-shot"`` (on a folder with one sub-folder of images per class): ``top1``,
    ``top5``, ``per_class`` accuracy and a ``confusion`` matrix (``confusion[true][predicted]``).

    Args:
        checkpoint: a checkpoint folder or file (any form ``LiteClip.load`` reads, a Hub id
            ``"hf-hub:owner/name"`` included).
        data: the data set: captioned (retrieval; by default the one the checkpoint's training
            run used) or a class-per-sub-folder image folder (zero-shot).
        split: ``"val"`` or ``"train"`` (the split a training run made: its ``val_fraction``
            and ``seed`` are read from the checkpoint when not given) or ``"all"``. Default:
            ``"val"`` on the run's own data, ``"all"`` on a data set given with ``data=``.
        task: ``"retrieval"`` or ``"zero-shot"``.
        templates: zero-shot prompts with ``{}`` for the class name: one (``"a photo of a
            {}."`` by default), a list (their embeddings are averaged per class, as CLIP does),
            or ``"ensemble"`` for a built-in set of 18 prompts in the manner of CLIP's ImageNet
            templates.
        batch_size: images per forward pass (retrieval: also the loss's batch).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"`` (CPU inference).
        val_fraction: retrieval: the held-out share of the split (default: the run's).
        seed: retrieval: the seed of the split (default: the run's).
        image_column: retrieval: CSV column of image paths (default: the run's).
        caption_column: retrieval: CSV column of captions (default: the run's).
        images_dir: retrieval: folder the image paths are relative to (default: the run's).
        decode: ``"exact"`` or ``"fast"`` (scaled decoding of large JPEGs; see
            ``LiteClip.load``).

    Returns:
        A dict of metrics (see above), with ``images`` (and ``captions``) counted.
    """
    if isinstance(templates, str):
        templates = [templates]
    if os.fspath(checkpoint).startswith(hub.PREFIX):
        checkpoint = hub.model_folder(os.fspath(checkpoint))
    return _liteclip.evaluate_model(dict(locals()))
