"""Built-in data (a captioned data set of coloured shapes, generated from a seed) and
``write_shards``, which turns a captioned data set into WebDataset shards.

Nothing is downloaded: the images are drawn by liteclip's Rust core. Each image shows one of
six colours (``COLORS``) of one of four shapes (``SHAPES``), large or small, on a textured grey
background, with five captions in the phrasings of ``TRAIN_TEMPLATES``. ``CLASSES`` are the 24
``"{color} {shape}"`` names, and ``HELD_OUT_TEMPLATE`` a prompt no training caption uses, for
zero-shot checks of what a model learned.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._liteclip import SHAPES_INFO as _INFO
from ._liteclip import make_shapes as _make_shapes
from ._liteclip import write_shards as _write_shards

CLASSES: list[str] = list(_INFO["classes"])
COLORS: list[str] = list(_INFO["colors"])
SHAPES: list[str] = list(_INFO["shapes"])
TRAIN_TEMPLATES: list[str] = list(_INFO["train_templates"])
HELD_OUT_TEMPLATE: str = _INFO["held_out_template"]


def make_shapes(
    path: str | os.PathLike[str],
    n_images: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    layout: str = "captions",
) -> Path:
    """Writes ``n_images`` generated images of side ``image_size`` under ``path``.

    ``layout="captions"`` gives the Flickr8k layout that ``liteclip.train`` reads
    (``Images/*.png`` + ``captions.txt``, five captions per image); ``layout="folders"`` gives
    one sub-folder per class (``"red circle/"``, ...), what
    ``liteclip.evaluate(..., task="zero-shot")`` reads. The same arguments always produce the
    same files; different seeds give different images.
    """
    return Path(
        _make_shapes(path, n_images=n_images, seed=seed, image_size=image_size, layout=layout)
    )


def write_shards(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    samples_per_shard: int = 1000,
    image_column: str = "image",
    caption_column: str = "caption",
    images_dir: str | os.PathLike[str] | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Writes the captioned data set ``source`` (a Flickr8k-layout folder or a CSV, read as
    ``liteclip.train`` reads it) as WebDataset shards ``output/00000.tar``, ... of
    ``samples_per_shard`` samples each, and returns their paths.

    One sample per image, as img2dataset writes them: ``{key}.jpg`` (or ``.png``/``.webp``: the
    file's bytes, not re-encoded), ``{key}.txt`` (its first caption) and ``{key}.json``
    (``{"captions": [all of them], "source": path}``). Each shard is written atomically. Name
    them all with a brace pattern: ``output/{00000..000NN}.tar``.

    ``shuffle`` (the default) writes the images in an order shuffled by ``seed``, so that every
    shard holds a bit of everything even when the source is sorted (by class, site or date):
    training reads only a few shards at once, and shards that each hold one class give batches
    of few classes. ``shuffle=False`` keeps the source's order.
    """
    paths = _write_shards(
        source,
        output,
        samples_per_shard=samples_per_shard,
        image_column=image_column,
        caption_column=caption_column,
        images_dir=images_dir,
        shuffle=shuffle,
        seed=seed,
    )
    return [Path(p) for p in paths]
