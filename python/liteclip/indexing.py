"""Indexing a folder of photos: build the index, or bring it up to date, in one process or
under torchrun. `liteclip index` and programs take this one path."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Callable, Union

from ._liteclip import INDEX_DEFAULTS, BadIndexError, Index

PathLike = Union[str, "os.PathLike[str]"]


def index_folder(
    root: PathLike,
    index: PathLike,
    checkpoint: PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    decode: str = "exact",
    batch_size: int = INDEX_DEFAULTS["batch_size"],
    lock_wait: float = INDEX_DEFAULTS["lock_wait"],
    commit_every: int = INDEX_DEFAULTS["commit_every"],
    progress: Callable[[dict[str, Any]], Any] | None = None,
    distributed: bool | str = "auto",
) -> dict[str, Any] | None:
    """Embeds the photos under ``root`` into the index folder ``index``: builds it with
    ``checkpoint`` the first time, later embeds only new and changed files and drops deleted
    ones (a checkpoint given then must hold the index's weights). Returns the update's report
    (``Index.update``'s).

    Under torchrun (``distributed="auto"`` with ``WORLD_SIZE > 1``, or ``distributed=True``)
    every rank embeds a disjoint share of the files that need it (one GPU each where there are
    GPUs) and rank 0 takes their rows in with one update; rank 0 returns the report, with
    ``"ranks"`` added, and the other ranks return None.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed is True or (distributed == "auto" and world > 1):
        return _index_on_ranks(
            root, index, checkpoint, device, precision, decode, batch_size, lock_wait, commit_every
        )
    options = dict(
        batch_size=batch_size, progress=progress, lock_wait=lock_wait, commit_every=commit_every
    )
    if checkpoint is not None:
        built = Index.build(
            root, index, checkpoint, device=device, precision=precision, decode=decode, **options
        )
        return built.last_report
    opened = open_index_of(root, index, device=device, precision=precision, decode=decode)
    return opened.update(**options)


def open_index_of(
    root: PathLike,
    index: PathLike,
    checkpoint: PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    decode: str = "exact",
) -> Index:
    """The existing index ``index``, which must be an index of the folder ``root``."""
    if not Index.exists(index):
        raise ValueError(
            f"{index} is not an index yet: give a checkpoint (checkpoint=, or --checkpoint) to "
            "build it"
        )
    opened = Index.open(index, checkpoint, device=device, precision=precision, decode=decode)
    if Path(root).resolve() != Path(opened.root):
        raise BadIndexError(f"{index} is an index of {opened.root}, not {root}")
    return opened


def _index_on_ranks(
    root: PathLike,
    index: PathLike,
    checkpoint: PathLike | None,
    device: str,
    precision: str,
    decode: str,
    batch_size: int,
    lock_wait: float,
    commit_every: int,
) -> dict[str, Any] | None:
    import torch.distributed as dist

    from .distributed import rank_device

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    # Embedding may take hours; a rank that dies closes its connection, which gloo notices.
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    try:
        device = rank_device(device)
        if rank == 0:
            if checkpoint is not None:
                Index.create(root, index, checkpoint, device, precision, decode)
            else:
                open_index_of(root, index, device=device, precision=precision, decode=decode)
        dist.barrier()
        opened = Index.open(index, checkpoint, device, precision, decode)
        opened.embed_share(rank, world, batch_size=batch_size, commit_every=commit_every)
        dist.barrier()
        report = None
        if rank == 0:
            report = opened.update(
                batch_size=batch_size, lock_wait=lock_wait, commit_every=commit_every
            )
            report["ranks"] = world
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return report
