"""Every option of `liteclip serve` and its default, defined once: the CLI's flags are made from
this dataclass, and `create_app`/`serve` take an instance of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _option(default: Any, help: str, flag: str | None = None) -> Any:
    """A field with its help text; `flag` names its command-line flag when the field's own
    name does not read well as one (a repeatable flag for a tuple)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class ServeOptions:
    checkpoint: str | None = _option(
        None, "the model: any checkpoint LiteClip.load reads (default: the index's own)"
    )
    index: str | None = _option(
        None, "a photo index (LIB.lcx from `liteclip index`) for /search and /thumb"
    )
    host: str = _option("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = _option(8000, "port to listen on (0: any free port, printed at start)")
    device: str = _option("auto", '"auto", "cpu", "cuda" or "cuda:N"')
    precision: str = _option("fp32", '"fp32", "bf16", "fp16" or "int8" (CPU inference)')
    decode: str = _option(
        "exact", '"exact" (every pixel) or "fast" (large JPEGs decoded at a reduced DCT scale)'
    )
    max_batch: int = _option(32, "most requests gathered into one model call")
    max_wait_ms: float = _option(
        5.0, "longest a request waits for others to join its batch (milliseconds)"
    )
    max_queue: int = _option(
        256, "requests waiting for the model before new ones get 503 with Retry-After"
    )
    api_key: str | None = _option(
        None,
        "require `Authorization: Bearer KEY` on every endpoint but /healthz and the page "
        "(the CLI also reads LITECLIP_API_KEY)",
    )
    max_body_mb: float = _option(20.0, "largest request body, in MB (larger: 413)")
    max_labels: int = _option(100, "most labels in one /predict request")
    max_text_chars: int = _option(300, "longest label, query or text, in characters")
    max_texts: int = _option(256, "most texts in one /embed/text request")
    max_images: int = _option(32, "most images in one /embed/image request")
    max_k: int = _option(100, "largest k of /search")
    thumb_size: int = _option(256, "longest side of /thumb previews, in pixels")
    access_log: bool = _option(True, "log one line per request")
    allowed_hosts: tuple[str, ...] = _option(
        (),
        "another name clients use in the Host header (repeatable; the bound address and "
        "localhost names are always allowed, others refused: a guard against DNS rebinding; "
        '"*" allows any)',
        flag="--allowed-host",
    )
    max_image_pixels: int = _option(
        50_000_000,
        "largest uploaded image, in pixels (larger: 413; decoding one takes about 4 bytes a "
        "pixel while it lasts)",
    )
    max_pending_images: int = _option(
        512,
        "uploaded images decoded and waiting for the model at once, over all requests (more: "
        "503 with Retry-After; about 0.6 MB each at 224 px)",
    )
    body_timeout_s: float = _option(
        30.0, "longest wait for the next part of a request body (longer: 408)"
    )
    shutdown_timeout_s: float = _option(
        30.0, "on SIGTERM, longest wait for the requests in flight before closing them"
    )
    watch: bool = _option(
        False,
        "keep the index current with its folder while serving: new, changed, deleted and "
        "renamed photos are searchable within seconds (file events, and a rescan every "
        "--rescan-every-s seconds)",
    )
    rescan_every_s: float = _option(
        600.0, "with --watch, seconds between rescans of the folder when no file event came"
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    def checked(self) -> ServeOptions:
        """The options, or a ValueError that says which one is wrong."""
        if self.checkpoint is None and self.index is None:
            raise ValueError("give a model: --checkpoint CK (or --index LIB.lcx, to use its own)")
        positive = ["max_batch", "max_queue", "max_labels", "max_text_chars", "max_texts"]
        positive += ["max_images", "max_k", "thumb_size", "max_image_pixels"]
        positive += ["max_pending_images"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        for name in ("body_timeout_s", "shutdown_timeout_s", "rescan_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_pending_images < self.max_images:
            raise ValueError(
                f"max_pending_images ({self.max_pending_images}) must be at least max_images "
                f"({self.max_images}), or a request of max_images images could never run"
            )
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be positive, got {self.max_body_mb}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.watch and self.index is None:
            raise ValueError("--watch keeps an index current: give it with --index LIB.lcx")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")
        return self


def option_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(ServeOptions))
