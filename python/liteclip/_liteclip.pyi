"""Type stubs of the native module (src/python/)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__version__: str
DEFAULT_MAX_IMAGE_PIXELS: int

# One image: a path, encoded bytes, a PIL.Image, or a uint8 array (H, W), (H, W, 3), (H, W, 4).
Image: TypeAlias = str | os.PathLike[str] | bytes | npt.NDArray[np.uint8] | Any
# One image, a list of them, or float32 (3, S, S) / (N, 3, S, S) preprocessed pixels.
Images: TypeAlias = Image | Sequence[Image] | npt.NDArray[np.floating]
Ranking: TypeAlias = list[tuple[str, float]]

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
    """A data-parallel training rank died, stopped answering, or was set up wrongly."""

class LiteClip:
    """A liteclip model on a device (see the module docs)."""

    def __init__(
        self,
        config: str = "liteclip",
        device: str = "auto",
        seed: int | None = None,
        precision: str = "fp32",
    ) -> None: ...
    @staticmethod
    def load(
        path: str | os.PathLike[str],
        device: str = "auto",
        config: str | None = None,
        precision: str = "fp32",
    ) -> LiteClip: ...
    @property
    def precision(self) -> str: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    def encode_image(self, images: Images, as_tensor: bool = False) -> Any: ...
    def encode_text(self, texts: str | Sequence[str], as_tensor: bool = False) -> Any: ...
    def similarity(
        self, images: Images, texts: str | Sequence[str], as_tensor: bool = False
    ) -> Any: ...
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

class ZeroShotPipeline:
    """Zero-shot image classification with a liteclip model."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | LiteClip | None = None,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None: ...
    def predict(
        self,
        image: Images,
        labels: Sequence[str],
        top_k: int = 5,
        hypothesis_template: str | None = None,
    ) -> Ranking | list[Ranking]: ...
    @property
    def model(self) -> LiteClip: ...

def preprocess(
    image: Image | Sequence[Image], image_size: int = 224
) -> npt.NDArray[np.float32]: ...
def tokenize(
    texts: str | Sequence[str],
    max_length: int = 128,
    padding: Literal["max_length", "longest"] = "max_length",
) -> dict[str, npt.NDArray[np.int64]]: ...
def get_max_image_pixels() -> int: ...
def set_max_image_pixels(limit: int) -> None: ...
def cuda_is_available() -> bool: ...

SHAPES_INFO: dict[str, Any]

def make_shapes(
    path: str | os.PathLike[str],
    n_images: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    layout: str = "captions",
) -> str: ...
def train_model(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    observer: Any,
    model: str = "liteclip",
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 2e-4,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    schedule: str = "constant",
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    init: str | os.PathLike[str] | None = None,
    image_weights: str | os.PathLike[str] | None = None,
    text_weights: str | os.PathLike[str] | None = None,
    early_stopping_patience: int | None = 2,
    augment: bool = False,
    resume: bool | str | os.PathLike[str] | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    images_dir: str | os.PathLike[str] | None = None,
    prefetch: int = 4,
    max_steps_per_epoch: int | None = None,
    skip_nonfinite: bool = False,
    collectives: Any = None,
    local_loss: bool = False,
) -> dict[str, Any]: ...
def evaluate_model(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str = "val",
    task: str = "retrieval",
    templates: list[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "fp32",
    val_fraction: float | None = None,
    seed: int | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    images_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]: ...
