"""liteclip: a small CLIP (ConvNeXt image tower + BERT text tower) computed in Rust on libtorch.

>>> from liteclip import ZeroShotPipeline
>>> pipeline = ZeroShotPipeline()          # loads ./model/liteclip2.pt
>>> pipeline.predict("examples/cat.jpg", ["a photo of a dog", "a photo of a cat"])
[('a photo of a cat', 0.99...), ('a photo of a dog', 0.00...)]

Everything that computes lives in the native module ``liteclip._liteclip``; this package only
re-exports it (and adds the command line in ``liteclip.cli``).
"""

# The native module links against the libtorch that ships inside PyPI `torch`; importing torch
# first loads those libraries into the process, wherever torch is installed.
import torch as _torch  # noqa: F401

from . import datasets
from ._liteclip import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadIndexError,
    CheckpointError,
    ConfigError,
    DeviceError,
    DistributedError,
    ImageDecodeError,
    Index,
    IndexLockedError,
    LiteClip,
    LiteClipError,
    NonFiniteLossError,
    SearchHit,
    TorchError,
    ZeroShotPipeline,
    __version__,
    cuda_is_available,
    get_max_image_pixels,
    parse_query,
    preprocess,
    set_max_image_pixels,
    tokenize,
)
from .indexing import index_folder
from .training import TrainResult, evaluate, train

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "BadIndexError",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "DistributedError",
    "ImageDecodeError",
    "Index",
    "IndexLockedError",
    "LiteClip",
    "LiteClipError",
    "NonFiniteLossError",
    "SearchHit",
    "TorchError",
    "ZeroShotPipeline",
    "__version__",
    "cuda_is_available",
    "get_max_image_pixels",
    "index_folder",
    "parse_query",
    "preprocess",
    "set_max_image_pixels",
    "tokenize",
    "train",
    "evaluate",
    "TrainResult",
    "datasets",
]
