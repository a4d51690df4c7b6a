"""`POST /v1/embeddings` and `GET /v1/models` in the OpenAI format, so that programs written
for OpenAI's embeddings API (its Python client, LangChain, LlamaIndex, ...) embed with
liteclip by changing only the base URL. Texts and images share the model's embedding space:
an input that is a `data:image/...;base64,...` URI is embedded as an image.

Errors on these paths take OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
which its clients turn into their own exception types.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import tokenize

if TYPE_CHECKING:
    from .app import Service

PREFIX = "/v1/"

# `data:image/png;base64,....`: the media type and the payload (the only form taken).
_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+)(?:;[^,;]*)*;base64,", re.ASCII)


class InvalidRequest(HTTPException):
    """A 400 that names the request field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(status_code=400, detail=message)
        self.param = param


_bad = InvalidRequest


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        503: "overloaded_error",
    }.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def model_name(service: Service) -> str:
    """The served model's name: its checkpoint's file or folder name."""
    return Path(service.checkpoint).name or "liteclip"


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    entry = {"id": model_name(service), "object": "model", "created": 0, "owned_by": "liteclip"}
    return JSONResponse({"object": "list", "data": [entry]})


async def embeddings(request: Request) -> Response:
    """`{"model": ..., "input": str | [str, ...], "encoding_format": "float" | "base64"}`.
    `model` may name anything (clients often send a fixed name): the served model answers, and
    the answer's `model` names it (as `GET /v1/models` does). `dimensions`, when given, must be
    the model's own."""
    service: Service = request.app.state.service
    options = service.options
    body = await _json(request)
    inputs = _inputs(body.get("input"), options.max_texts)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        message = f'encoding_format must be "float" or "base64", got {encoding!r}'
        raise _bad(message, "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != service.model.embed_dim:
        raise _bad(
            f"this model's embeddings have {service.model.embed_dim} dimensions and cannot be "
            f"shortened to {dimensions}; leave dimensions out",
            "dimensions",
        )
    texts: list[tuple[int, str]] = []
    images: list[tuple[int, bytes]] = []
    for n, value in enumerate(inputs):
        image = _image_bytes(value, n)
        if image is not None:
            images.append((n, image))
        elif len(value) > options.max_text_chars:
            raise _bad(
                f"input[{n}] is {len(value)} characters long; the limit is "
                f"{options.max_text_chars}",
                "input",
            )
        else:
            texts.append((n, value))
    if len(images) > options.max_images:
        raise _bad(f"{len(images)} images; the limit is {options.max_images}", "input")
    rows: list[Any] = [None] * len(inputs)
    with service.images.hold(len(images)):
        pixels = [await service.pixels_of(data, f"input[{n}]") for n, data in images]
        # Texts and images go to their batchers at once; the first failure (a full queue,
        # the model) is raised as itself, for the error handlers to answer.
        jobs = []
        if texts:
            jobs.append(_embed(service, "embed_text", texts, [t for _, t in texts], rows))
        if images:
            jobs.append(_embed(service, "embed_image", images, pixels, rows))
        await asyncio.gather(*jobs)
    data = [
        {"object": "embedding", "index": n, "embedding": _encoded(row, encoding)}
        for n, row in enumerate(rows)
    ]
    tokens = _token_count([t for _, t in texts])
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model_name(service),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _embed(
    service: Service, kind: str, placed: list[tuple[int, Any]], items: list[Any], rows: list[Any]
) -> None:
    for (n, _), row in zip(placed, await service.batchers[kind].submit(items)):
        rows[n] = row


async def _json(request: Request) -> dict[str, Any]:
    example = '{"model": "liteclip", "input": ["a photo of a dog"]}'
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise _bad(f"the body must be JSON such as {example}") from None
    if not isinstance(body, dict):
        raise _bad(f"the body must be a JSON object such as {example}")
    return body


def _inputs(value: Any, limit: int) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad("input must be a string or a non-empty list of strings", "input")
    if len(value) > limit:
        raise _bad(f"{len(value)} inputs; the limit is {limit}", "input")
    for n, item in enumerate(value):
        if not isinstance(item, str):
            raise _bad(
                f"input[{n}] is {type(item).__name__}: send texts (or data:image URIs), "
                "not token ids",
                "input",
            )
        if not item.strip():
            raise _bad(f"input[{n}] is empty", "input")
    return value


def _image_bytes(value: str, n: int) -> bytes | None:
    """The bytes of a `data:image/...;base64,` input, or None for a text."""
    if not value.startswith("data:"):
        return None
    match = _DATA_URI.match(value)
    if match is None:
        raise _bad(
            f"input[{n}] is a data URI but not `data:image/...;base64,...`: images are taken "
            "as base64 data URIs",
            "input",
        )
    try:
        data = base64.b64decode(value[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"input[{n}]: the data URI's payload is not valid base64", "input") from None
    if not data:
        raise _bad(f"input[{n}]: the data URI holds no bytes", "input")
    return data


def _encoded(row: list[float], encoding: str) -> Any:
    if encoding == "float":
        return row
    # OpenAI's base64 form: the little-endian float32 bytes of the vector.
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")


def _token_count(texts: list[str]) -> int:
    if not texts:
        return 0
    return int(tokenize(texts, padding="longest")["attention_mask"].sum())


__all__ = ["PREFIX", "embeddings", "error_body", "models"]
