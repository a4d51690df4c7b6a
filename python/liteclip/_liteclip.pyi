"""Type stubs of the native module (src/python/)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeAlias, final, overload

import numpy as np
import numpy.typing as npt
import torch
from typing_extensions import Self

__all__ = [
    "__version__",
    "LiteClip",
    "ZeroShotPipeline",
    "preprocess",
    "tokenize",
    "get_max_image_pixels",
    "set_max_image_pixels",
    "image_dimensions",
    "cuda_is_available",
    "_panic_for_tests",
    "_torch_failure_for_tests",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "train_model",
    "evaluate_model",
    "train_defaults",
    "evaluate_defaults",
    "make_shapes",
    "write_shards",
    "SHAPES_INFO",
    "OPTION_CHOICES",
    "INDEX_DEFAULTS",
    "DUPLICATE_THRESHOLD",
    "LiteClipError",
    "ImageDecodeError",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "DistributedError",
    "NonFiniteLossError",
    "TorchError",
    "BadIndexError",
    "IndexLockedError",
    "Index",
    "SearchHit",
    "parse_query",
]

__version__: str
DEFAULT_MAX_IMAGE_PIXELS: int

# One image: a path, encoded bytes, a PIL.Image, or a uint8 array (H, W), (H, W, 3), (H, W, 4).
_Image: TypeAlias = str | os.PathLike[str] | bytes | npt.NDArray[np.uint8] | Any
# One image, a list of them, or float32 (3, S, S) / (N, 3, S, S) preprocessed pixels.
_Images: TypeAlias = _Image | Sequence[_Image] | npt.NDArray[np.floating]
_Ranking: TypeAlias = list[tuple[str, float]]

class LiteClipError(Exception):
    """Base class of every error liteclip raises on its own account."""

class ImageDecodeError(LiteClipError, ValueError):
    """An input is not a decodable image, or is refused (empty, too many pixels)."""

class CheckpointError(LiteClipError, ValueError):
    """A checkpoint cannot be read or does not fit the model config."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched_keys: list[tuple[str, list[int], list[int]]]

class ConfigError(LiteClipError, ValueError):
    """A model config is inconsistent or names an unknown preset."""

class DeviceError(LiteClipError, RuntimeError):
    """A device was asked for that this machine does not have."""

class DistributedError(LiteClipError, RuntimeError):
    """A data-parallel training rank died, stopped answering, sent something unreadable, or
    was set up wrongly."""

class NonFiniteLossError(LiteClipError, FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""

class TorchError(LiteClipError, RuntimeError):
    """libtorch reported a failure (out of memory, a CUDA error, ...)."""

class BadIndexError(LiteClipError, ValueError):
    """A photo index cannot be used: not an index, damaged, too new, or of other weights."""

class IndexLockedError(LiteClipError, TimeoutError):
    """Another process is writing this photo index; the wait for it ran out."""

_Embeddings: TypeAlias = npt.NDArray[np.float32]
_Progress: TypeAlias = Any  # a callable taking one dict

@final
class LiteClip:
    """A liteclip model on a device (see the module docs)."""

    def __new__(
        cls,
        config: str = "liteclip",
        device: str = "auto",
        seed: int | None = None,
        precision: str = "fp32",
        decode: str = "exact",
    ) -> Self: ...
    @staticmethod
    def load(
        path: str | os.PathLike[str],
        device: str = "auto",
        config: str | None = None,
        precision: str = "fp32",
        decode: str = "exact",
    ) -> LiteClip: ...
    @property
    def precision(self) -> str: ...
    @property
    def decode(self) -> str: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload liteclip model",
    ) -> str: ...
    def preprocess(self, images: _Image | Sequence[_Image]) -> npt.NDArray[np.float32]: ...
    @overload
    def encode_image(self, images: _Images, as_tensor: Literal[False] = False) -> _Embeddings: ...
    @overload
    def encode_image(self, images: _Images, as_tensor: Literal[True]) -> torch.Tensor: ...
    @overload
    def encode_text(
        self, texts: str | Sequence[str], as_tensor: Literal[False] = False
    ) -> _Embeddings: ...
    @overload
    def encode_text(self, texts: str | Sequence[str], as_tensor: Literal[True]) -> torch.Tensor: ...
    @overload
    def similarity(
        self, images: _Images, texts: str | Sequence[str], as_tensor: Literal[False] = False
    ) -> _Embeddings: ...
    @overload
    def similarity(
        self, images: _Images, texts: str | Sequence[str], as_tensor: Literal[True]
    ) -> torch.Tensor: ...
    def embed_folder(
        self, folder: str | os.PathLike[str], batch_size: int = 64
    ) -> tuple[list[str], _Embeddings, list[tuple[str, str]]]: ...
    def embed_to_file(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str],
        batch_size: int = 64,
        checkpoint: str | None = None,
    ) -> dict[str, Any]: ...
    def parameter_shapes(self) -> dict[str, list[int]]: ...
    def state_dict(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def export_pt(self, path: str | os.PathLike[str]) -> None: ...
    @property
    def logit_scale(self) -> float: ...
    @property
    def device(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def num_parameters(self) -> int: ...

@final
class ZeroShotPipeline:
    """Zero-shot image classification with a liteclip model."""

    def __new__(
        cls,
        checkpoint: str | os.PathLike[str] | LiteClip | None = None,
        device: str = "auto",
        precision: str = "fp32",
        decode: str = "exact",
    ) -> Self: ...
    def predict(
        self,
        image: _Images,
        labels: Sequence[str],
        top_k: int = 5,
        hypothesis_template: str | None = None,
    ) -> _Ranking | list[_Ranking]: ...
    def predict_each(
        self,
        images: _Images,
        label_sets: Sequence[Sequence[str]],
        top_k: int | Sequence[int] = 5,
        hypothesis_template: str | None | Sequence[str | None] = None,
    ) -> list[_Ranking]: ...
    @property
    def model(self) -> LiteClip: ...

@final
class SearchHit:
    """One search result: unpacks and compares as `(path, score)`, with the photo's metadata."""

    @property
    def path(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def id(self) -> int: ...
    @property
    def taken(self) -> str | None: ...
    @property
    def taken_from(self) -> str | None: ...
    @property
    def camera(self) -> str | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def gps(self) -> tuple[float, float] | None: ...
    @property
    def file_size(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> str | float: ...
    def __iter__(self) -> Iterator[str | float]: ...

_Term: TypeAlias = str | _Image | tuple[str | _Image, float]
_Query: TypeAlias = _Term | list[_Term]

def parse_query(query: str | Sequence[str]) -> list[tuple[str, float]]: ...

@final
class Index:
    """A searchable, incrementally updated index of a folder of photos, kept on disk."""

    @staticmethod
    def build(
        root: str | os.PathLike[str],
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str],
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 64,
        progress: _Progress | None = None,
        lock_wait: float = 10.0,
        commit_every: int = 1024,
        decode: str = "exact",
    ) -> Index: ...
    @staticmethod
    def create(
        root: str | os.PathLike[str],
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str],
        device: str = "auto",
        precision: str = "fp32",
        decode: str = "exact",
    ) -> Index: ...
    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool: ...
    @staticmethod
    def open(
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | LiteClip | None = None,
        device: str = "auto",
        precision: str = "fp32",
        decode: str = "exact",
    ) -> Index: ...
    def update(
        self,
        batch_size: int = 64,
        progress: _Progress | None = None,
        lock_wait: float = 10.0,
        commit_every: int = 1024,
    ) -> dict[str, Any]: ...
    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        batch_size: int = 64,
        progress: _Progress | None = None,
        lock_wait: float = 10.0,
        commit_every: int = 1024,
    ) -> dict[str, Any]: ...
    def remove(self, paths: Sequence[str | os.PathLike[str]], lock_wait: float = 10.0) -> int: ...
    def embed_share(
        self,
        rank: int,
        world: int,
        batch_size: int = 64,
        progress: _Progress | None = None,
        commit_every: int = 1024,
    ) -> int: ...
    def search(
        self,
        query: _Query,
        k: int = 10,
        *,
        offset: int = 0,
        after: str | None = None,
        before: str | None = None,
        under: str | os.PathLike[str] | None = None,
        camera: str | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> list[SearchHit]: ...
    def search_many(
        self,
        queries: Sequence[_Query],
        k: int = 10,
        *,
        offset: int = 0,
        after: str | None = None,
        before: str | None = None,
        under: str | os.PathLike[str] | None = None,
        camera: str | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> list[list[SearchHit]]: ...
    def duplicates(self, threshold: float = 0.95) -> list[dict[str, Any]]: ...
    def __contains__(self, path: str | os.PathLike[str], /) -> bool: ...
    def ids_of(self, paths: Sequence[str | os.PathLike[str]]) -> list[int | None]: ...
    def thumbnail(self, id: int, size: int = 256) -> bytes | None: ...
    def files(self) -> list[str]: ...
    def __len__(self) -> int: ...
    @property
    def last_report(self) -> dict[str, Any] | None: ...
    @property
    def root(self) -> str: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def device(self) -> str: ...

def preprocess(
    image: _Image | Sequence[_Image], image_size: int = 224, decode: str = "exact"
) -> npt.NDArray[np.float32]: ...
def tokenize(
    texts: str | Sequence[str],
    max_length: int = 128,
    padding: Literal["max_length", "longest"] = "max_length",
) -> dict[str, npt.NDArray[np.int64]]: ...
def get_max_image_pixels() -> int: ...
def set_max_image_pixels(limit: int) -> None: ...
def image_dimensions(data: bytes) -> tuple[int, int]: ...
def cuda_is_available() -> bool: ...
def _panic_for_tests() -> None: ...
def _torch_failure_for_tests() -> None: ...

SHAPES_INFO: dict[str, Any]
IMAGE_EXTENSIONS: list[str]
OPTION_CHOICES: dict[str, dict[str, list[str]]]
INDEX_DEFAULTS: dict[str, Any]
DUPLICATE_THRESHOLD: float

def write_shards(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    samples_per_shard: int = 1000,
    image_column: str = "image",
    caption_column: str = "caption",
    images_dir: str | os.PathLike[str] | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[str]: ...
def make_shapes(
    path: str | os.PathLike[str],
    n_images: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    layout: str = "captions",
) -> str: ...
def train_model(
    options: dict[str, Any], observer: Any, collectives: Any = None
) -> dict[str, Any]: ...
def train_defaults() -> dict[str, Any]: ...
def evaluate_model(options: dict[str, Any]) -> dict[str, Any]: ...
def evaluate_defaults() -> dict[str, Any]: ...
