"""The HTTP app of `liteclip serve`: routes, request validation and the batchers behind them.

Requests are parsed and checked here, images decoded on a worker thread, and then each request
waits in its kind's `Batcher` for one model call shared with the requests that came at the same
time. The model calls are the library's own (`ZeroShotPipeline.predict_each`,
`Index.search_many`, `LiteClip.encode_text` / `encode_image`): the server adds only HTTP.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import Index, TorchError, ZeroShotPipeline, parse_query, preprocess
from .._liteclip import DUPLICATE_THRESHOLD, image_dimensions
from ..watching import FolderEvents, keep_current
from . import metrics as metrics_api
from . import openai_api
from .batcher import Batcher, Overloaded
from .duplicates import DuplicateFinder
from .limits import BearerAuth, BodyLimit, HostCheck, allowed_hosts, authorized
from .metrics import CountRequests, Metrics
from .options import ServeOptions

log = logging.getLogger("liteclip.serve")

# Reachable without the API key: the liveness and readiness probes (they tell nothing of what
# is served), and the page (static, it holds no data; it asks for the key and sends it with
# each call it makes).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})

# The longest /readyz waits for the model to answer its tiny request.
READY_TIMEOUT_S = 10.0

# Thumbnails kept in memory (about 15 KB each).
THUMB_CACHE = 512


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


@dataclass
class PredictItem:
    pixels: np.ndarray
    labels: list[str]
    template: str | None
    top_k: int


@dataclass
class SearchItem:
    query: Any  # query terms (see `Index.search`), or preprocessed pixels (3, S, S)
    k: int
    # Filters and paging: Index.search's keywords (offset, after, before, under, camera,
    # min_score, sort).
    filters: dict[str, Any]


class Service:
    """The loaded model and index, and the batched calls into them (run on the model thread)."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options.checked()
        device, precision = options.device, options.precision
        self.index: Index | None = None
        if options.index is not None:
            self.index = Index.open(options.index, device=device, precision=precision)
        self.checkpoint = options.checkpoint or (self.index.checkpoint if self.index else "")
        self.pipeline = ZeroShotPipeline(
            self.checkpoint, device=device, precision=precision, decode=options.decode
        )
        self.model = self.pipeline.model
        if self.index is not None:
            # The index searches with this same model (checked to hold the index's weights).
            self.index = Index.open(options.index, checkpoint=self.model)
        self.image_size = self.model.image_size
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "liteclip-model")
        self.batchers: dict[str, Batcher] = {}
        self.metrics = Metrics()
        self.watcher: IndexWatcher | None = None
        self.duplicates: DuplicateFinder | None = None
        if self.index is not None:
            self.duplicates = DuplicateFinder(self.index.path, self.model)
        self.images = ImageBudget(self.options)
        # Thumbnails of the index generation they were made in (an update may delete a photo).
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._thumbs_generation = -1

    # --- batched model calls (on the model thread) ---

    def predict_batch(self, items: list[PredictItem]) -> list[list[tuple[str, float]]]:
        return self.pipeline.predict_each(
            np.stack([i.pixels for i in items]),
            [i.labels for i in items],
            top_k=[i.top_k for i in items],
            hypothesis_template=[i.template for i in items],
        )

    def search_batch(self, items: list[SearchItem]) -> list[list[dict[str, Any]]]:
        """One `search_many` per distinct set of filters among the batch's requests."""
        assert self.index is not None
        groups: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            groups.setdefault(json.dumps(item.filters, sort_keys=True), []).append(n)
        results: list[list[dict[str, Any]]] = [[] for _ in items]
        for members in groups.values():
            k = max(items[n].k for n in members)
            found = self.index.search_many(
                [items[n].query for n in members], k=k, **items[members[0]].filters
            )
            for n, hits in zip(members, found):
                results[n] = [_hit_json(hit) for hit in hits[: items[n].k]]
        return results

    def query_terms(self, q: str) -> Any:
        """The terms of a `q` in rclip's form. A term naming a photo in the index (its path
        relative to the indexed folder) searches with that photo's stored embedding; every
        other term is text: no other file on this machine is read."""
        assert self.index is not None
        terms: list[Any] = []
        for text, weight in parse_query(q):
            term: Any = text
            relative = text.lstrip("/")
            if relative and relative in self.index:
                term = Path(self.index.root) / relative
            terms.append(term if weight == 1.0 else (term, weight))
        return terms if len(terms) > 1 else terms[0]

    def embed_text_batch(self, items: list[list[str]]) -> list[list[list[float]]]:
        rows = self.model.encode_text([t for texts in items for t in texts])
        return _split(rows.tolist(), [len(texts) for texts in items])

    def embed_image_batch(self, items: list[list[np.ndarray]]) -> list[list[list[float]]]:
        rows = self.model.encode_image(np.stack([p for pixels in items for p in pixels]))
        return _split(rows.tolist(), [len(pixels) for pixels in items])

    # --- lifecycle ---

    def start(self) -> None:
        o = self.options
        calls = {
            "predict": self.predict_batch,
            "embed_text": self.embed_text_batch,
            "embed_image": self.embed_image_batch,
            "search": self.search_batch,
        }
        for name, compute in calls.items():
            self.batchers[name] = Batcher(
                name,
                compute,
                self.executor,
                max_batch=o.max_batch,
                max_wait=o.max_wait_ms / 1000,
                max_queue=o.max_queue,
                on_batch=self.metrics.observe_batch,
            )
            self.batchers[name].start()

        if o.watch:
            self.watcher = IndexWatcher(o, self.model)
            self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await anyio.to_thread.run_sync(self.watcher.stop)
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.duplicates is not None:
            self.duplicates.close()
        self.executor.shutdown(wait=True)

    # --- helpers the routes share ---

    async def pixels(self, upload: UploadFile) -> np.ndarray:
        """An uploaded file's image decoded and preprocessed (see `pixels_of`)."""
        return await self.pixels_of(await upload.read(), upload.filename or "upload")

    async def pixels_of(self, data: bytes, name: str) -> np.ndarray:
        """An uploaded image decoded and preprocessed, within the server's limits: its pixel
        count (read from its header, before any decoding) and the decodes that may run at
        once. The caller holds a place for it in `images` (see `ImageBudget.hold`)."""
        if not data:
            raise _bad(f"the file {name!r} is empty, not an image")
        try:
            width, height = image_dimensions(data)
        except ValueError as error:
            raise _bad(f"{name}: {error}") from None
        limit = self.options.max_image_pixels
        if width * height > limit:
            raise _bad(
                f"{name} is {width}x{height} = {width * height:,} pixels; this server takes "
                f"images of up to {limit:,} pixels",
                413,
            )
        async with self.images.decoding:
            try:
                return await anyio.to_thread.run_sync(
                    _decode, data, self.image_size, self.options.decode, name
                )
            except ValueError as error:  # ImageDecodeError included
                raise _bad(str(error)) from None

    async def thumbnail(self, id_: int) -> bytes | None:
        assert self.index is not None
        generation = await anyio.to_thread.run_sync(lambda: self.index.generation)
        if generation != self._thumbs_generation:
            self._thumbs.clear()
            self._thumbs_generation = generation
        if id_ in self._thumbs:
            self._thumbs.move_to_end(id_)
            return self._thumbs[id_]
        jpeg = await anyio.to_thread.run_sync(self.index.thumbnail, id_, self.options.thumb_size)
        if jpeg is not None:
            self._thumbs[id_] = jpeg
            if len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return jpeg

    def require_index(self) -> Index:
        if self.index is None:
            raise _bad("this server has no photo index: start it with --index LIB.lcx", 404)
        return self.index


class IndexWatcher:
    """`--watch`: a thread that keeps the index current with its folder (see
    `liteclip.watching`), writing through an `Index` of its own that shares the server's model;
    the searches see each commit as they would another process's. Stopping lets an update in
    progress commit what it has embedded."""

    def __init__(self, options: ServeOptions, model: Any) -> None:
        assert options.index is not None
        self.options = options
        self.index = Index.open(options.index, checkpoint=model)
        self.halt = threading.Event()
        self.events = FolderEvents(self.index.root, self.index.path, self.halt)
        self.thread = threading.Thread(target=self._run, name="liteclip-index-watch", daemon=True)

    def start(self) -> None:
        self.events.start()
        self.thread.start()

    def _run(self) -> None:
        def report(update: dict[str, Any]) -> None:
            if update["embedded"] or update["removed"]:
                log.info(
                    "index updated (%s): %d embedded, %d removed, %d photos",
                    update["trigger"],
                    update["embedded"],
                    update["removed"],
                    update["size"],
                )

        try:
            # Changes made while the server was down first, then whatever comes.
            self.events.changed.set()
            keep_current(
                self.index,
                self.events,
                rescan_every=self.options.rescan_every_s,
                on_update=report,
            )
        except Exception:  # noqa: BLE001 - searches go on over the index as it is
            log.exception("keeping the index current failed; it is no longer watched")

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()
        self.events.join()


class ImageBudget:
    """What uploaded images may cost the server at once: decodes in flight (no more than the
    cores, each holding one full-size image while it lasts) and images decoded and waiting
    for the model (`max_pending_images` over all requests; a request that would pass it is
    answered 503 with Retry-After at once rather than queued)."""

    def __init__(self, options: ServeOptions) -> None:
        self.decoding = anyio.Semaphore(os.cpu_count() or 1)
        self.limit = options.max_pending_images
        self.pending = 0

    @contextlib.contextmanager
    def hold(self, n: int):
        if self.pending + n > self.limit:
            raise Overloaded(
                f"{self.pending} uploaded images are waiting for the model; retry shortly"
            )
        self.pending += n
        try:
            yield
        finally:
            self.pending -= n


def _decode(data: bytes, image_size: int, decode: str, name: str) -> np.ndarray:
    try:
        return preprocess(data, image_size=image_size, decode=decode)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _split(rows: list[Any], counts: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for n in counts:
        out.append(rows[start : start + n])
        start += n
    return out


# --- request parsing ---


def _hit_json(hit: Any) -> dict[str, Any]:
    record = hit.to_dict()
    record["thumb"] = f"/thumb/{record.pop('id')}"
    return record


def _search_filters(params: Any) -> dict[str, Any]:
    """Index.search's filter and paging keywords from query or form fields (checked there)."""
    filters: dict[str, Any] = {}
    for name in ("after", "before", "under", "camera", "sort"):
        value = params.get(name)
        if isinstance(value, str) and value.strip():
            filters[name] = value.strip()[:200]
    filters["offset"] = _int_param(params.get("offset"), "offset", 0, 0, 1_000_000)
    min_score = params.get("min_score")
    if isinstance(min_score, str) and min_score.strip():
        try:
            filters["min_score"] = float(min_score)
        except ValueError:
            raise _bad(f"min_score must be a number, got {min_score[:40]!r}") from None
    return filters


def _int_param(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _bad(f"{name} must be a whole number, got {str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise _bad(f"{name} must be between {low} and {high}, got {number}")
    return number


def _check_text(text: Any, what: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise _bad(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _bad(f"{what} is empty")
    if len(text) > max_chars:
        raise _bad(f"{what} is {len(text)} characters long; the limit is {max_chars}")
    return text


def _labels(form: FormData, options: ServeOptions) -> list[str]:
    values = [v for v in form.getlist("labels") if isinstance(v, str)]
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            values = json.loads(values[0])
        except json.JSONDecodeError as error:
            raise _bad(f"labels is not a valid JSON list: {error}") from None
        except RecursionError:
            raise _bad("labels is JSON nested too deeply; send a flat list of strings") from None
        if not isinstance(values, list):
            raise _bad("labels must be a JSON list of strings")
    if len(values) < 2:
        raise _bad(
            "give at least 2 labels to choose from: repeat the `labels` field, "
            'or send one JSON list such as ["a cat", "a dog"]'
        )
    if len(values) > options.max_labels:
        raise _bad(f"{len(values)} labels; the limit is {options.max_labels}")
    return [_check_text(v, f"labels[{i}]", options.max_text_chars) for i, v in enumerate(values)]


def _image_field(form: FormData, name: str = "image") -> UploadFile:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        raise _bad(f"send the image as a file in the multipart field `{name}`")
    return value


def _form(request: Request) -> Any:
    # `async with` closes the uploaded files' spools when the request is parsed.
    return request.form(max_files=1000, max_fields=1000)


# --- routes ---


def _service(request: Request) -> Service:
    return request.app.state.service


async def healthz(request: Request) -> Response:
    """Whether the server is up; with the API key (or when it has none), also what it serves
    (the checkpoint's path, the index's size), which a caller without the key may not see."""
    service = _service(request)
    key = service.options.api_key
    if key is not None and not authorized(request.scope, f"Bearer {key}".encode()):
        return JSONResponse({"status": "ok"})
    size = None
    if service.index is not None:
        size = await anyio.to_thread.run_sync(len, service.index)
    return JSONResponse(
        {
            "status": "ok",
            "model": service.checkpoint,
            "device": service.model.device,
            "precision": service.model.precision,
            "index_size": size,
            "batching": {name: b.stats() for name, b in service.batchers.items()},
        }
    )


async def readyz(request: Request) -> Response:
    """200 once the model answers: each call sends it a tiny request (batched with any other
    work), so a server whose model is still loading, wedged or failing answers 503."""
    service = _service(request)
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await service.batchers["embed_text"].submit(["a photo"])
    except TimeoutError:
        return JSONResponse({"status": "not ready", "reason": "the model is not answering"}, 503)
    except Overloaded:
        return JSONResponse({"status": "not ready", "reason": "the queue is full"}, 503)
    except Exception as error:  # noqa: BLE001 - any failure of the model means not ready
        log.error("the readiness request failed: %s", error)
        return JSONResponse({"status": "not ready", "reason": "the model failed"}, 503)
    return JSONResponse({"status": "ready"})


async def predict(request: Request) -> Response:
    service, options = _service(request), _service(request).options
    async with _form(request) as form:
        labels = _labels(form, options)
        template = _template_field(form, options)
        top_k = _int_param(form.get("top_k"), "top_k", 5, 1, options.max_labels)
        with service.images.hold(1):
            pixels = await service.pixels(_image_field(form))
            item = PredictItem(pixels, labels, template, top_k)
            ranking = await service.batchers["predict"].submit(item)
    # "prob" repeats "probability" for clients written against earlier versions (deprecated).
    return JSONResponse(
        {"predictions": [{"label": lab, "probability": p, "prob": p} for lab, p in ranking]}
    )


def _template_field(form: FormData, options: ServeOptions) -> str | None:
    """The prompt template: `hypothesis_template`, as in the Python API and the CLI, or its
    deprecated short name `template`."""
    given = {name: form.get(name) for name in ("hypothesis_template", "template")}
    given = {name: value for name, value in given.items() if value is not None}
    if len(given) > 1:
        raise HTTPException(400, "give hypothesis_template or template, not both")
    for name, value in given.items():
        return _check_text(value, name, options.max_text_chars)
    return None


async def embed_text(request: Request) -> Response:
    service, options = _service(request), _service(request).options
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad('the body must be JSON: {"texts": ["...", ...]}') from None
    except RecursionError:
        raise _bad('the JSON nests too deeply; send {"texts": ["...", ...]}') from None
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not texts:
        raise _bad('the body must be {"texts": ["...", ...]} with at least one text')
    if len(texts) > options.max_texts:
        raise _bad(f"{len(texts)} texts; the limit is {options.max_texts}")
    texts = [_check_text(t, f"texts[{i}]", options.max_text_chars) for i, t in enumerate(texts)]
    rows = await service.batchers["embed_text"].submit(texts)
    return JSONResponse({"embeddings": rows})


async def embed_image(request: Request) -> Response:
    service, options = _service(request), _service(request).options
    async with _form(request) as form:
        files = [f for name in ("image", "images") for f in form.getlist(name)]
        files = [f for f in files if isinstance(f, UploadFile)]
        if not files:
            raise _bad("send one or more image files in the multipart field `image`")
        if len(files) > options.max_images:
            raise _bad(f"{len(files)} images; the limit is {options.max_images}")
        with service.images.hold(len(files)):
            pixels = [await service.pixels(f) for f in files]
            rows = await service.batchers["embed_image"].submit(pixels)
    return JSONResponse({"embeddings": rows})


async def search(request: Request) -> Response:
    service, options = _service(request), _service(request).options
    service.require_index()
    k_default = 10
    if request.method == "GET":
        query: Any = request.query_params.get("q")
        if query is None:
            raise _bad("give the words to search for: /search?q=a+dog+on+a+beach")
        query = service.query_terms(_check_text(query, "q", options.max_text_chars))
        k = _int_param(request.query_params.get("k"), "k", k_default, 1, options.max_k)
        filters = _search_filters(request.query_params)
    else:
        async with _form(request) as form:
            k_value = form.get("k", request.query_params.get("k"))
            k = _int_param(k_value, "k", k_default, 1, options.max_k)
            filters = _search_filters(form)
            with service.images.hold(1):
                query = await service.pixels(_image_field(form))
                item = SearchItem(query, k, filters)
                results = await service.batchers["search"].submit(item)
            return JSONResponse({"results": results})
    results = await service.batchers["search"].submit(SearchItem(query, k, filters))
    return JSONResponse({"results": results})


async def duplicates(request: Request) -> Response:
    """Groups of near-duplicate photos at `threshold` (a cosine; default the library's), each
    with the photo to keep: `{"status": "done", "total": N, "groups": [{"keep": {path,
    thumb}, "duplicates": [...]}]}` (`offset`, `limit` page the groups), or 202 `{"status":
    "computing"}` with Retry-After while they are being found (see `DuplicateFinder`)."""
    service = _service(request)
    index = service.require_index()
    params = request.query_params
    threshold = DUPLICATE_THRESHOLD
    if params.get("threshold"):
        try:
            threshold = float(params["threshold"])
        except ValueError:
            raise _bad(f"threshold must be a number, got {params['threshold'][:40]!r}") from None
        if not 0 < threshold <= 1:
            raise _bad(f"threshold must be a cosine in (0, 1], got {threshold}")
    offset = _int_param(params.get("offset"), "offset", 0, 0, 10_000_000)
    limit = _int_param(params.get("limit"), "limit", 100, 1, 1000)
    assert service.duplicates is not None
    generation = await anyio.to_thread.run_sync(lambda: index.generation)
    groups = service.duplicates.groups(generation, threshold)
    if groups is None:
        return JSONResponse({"status": "computing"}, 202, headers={"Retry-After": "1"})
    page = groups[offset : offset + limit]
    return JSONResponse({"status": "done", "total": len(groups), "groups": page})


async def thumb(request: Request) -> Response:
    service = _service(request)
    service.require_index()
    id_ = request.path_params["id"]
    missing = _bad(f"no indexed image has id {id_}", 404)
    try:
        jpeg = await service.thumbnail(id_)
    except OverflowError:
        raise missing from None
    except (OSError, ValueError) as error:  # the file changed or went away since indexing
        # The reason (a path, a decoder's message) is for the operator's log, not the client.
        log.info("thumbnail %s cannot be served: %s", id_, error)
        raise _bad(f"image {id_} cannot be read now", 404) from None
    if jpeg is None:
        raise missing
    # An id names one version of one file (a changed file gets a new id): cacheable.
    headers = {"Cache-Control": "private, max-age=86400"}
    return Response(jpeg, media_type="image/jpeg", headers=headers)


async def page(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


# --- errors: always JSON `{"error": ...}` (OpenAI's error object under /v1/) ---


def _error(
    request: Request, message: str, status: int, headers: dict[str, str] | None = None
) -> Response:
    if request.url.path.startswith(openai_api.PREFIX):
        body = openai_api.error_body(message, status, getattr(request.state, "param", None))
        return JSONResponse(body, status, headers=headers)
    return JSONResponse({"error": message}, status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    request.state.param = getattr(exc, "param", None)
    return _error(request, exc.detail, exc.status_code, exc.headers)


async def _overloaded(request: Request, exc: Exception) -> Response:
    return _error(request, str(exc), 503, {"Retry-After": "1"})


async def _bad_value(request: Request, exc: Exception) -> Response:
    # The library's own checks (ValueError, and liteclip's errors built on it).
    return _error(request, str(exc), 400)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection mid-request: nobody reads the answer, nothing to log.
    log.debug("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _model_failed(request: Request, exc: Exception) -> Response:
    # libtorch failed inside a forward (out of memory, a CUDA error): its message, no paths.
    log.error("the model failed while answering %s %s: %s", request.method, request.url.path, exc)
    return _error(request, f"the model failed: {exc}", 500)


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("error while answering %s %s", request.method, request.url.path)
    # The exception's text may name server-side files: it stays in the log.
    return _error(request, "internal error; the server's log has the details", 500)


def create_app(options: ServeOptions, service: Service | None = None) -> Any:
    """The ASGI app (with its body limit and, given a key, authentication), model loaded."""
    service = service or Service(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_api.metrics, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/embed/text", embed_text, methods=["POST"]),
        Route("/embed/image", embed_image, methods=["POST"]),
        Route("/search", search, methods=["GET", "POST"]),
        Route("/thumb/{id:int}", thumb, methods=["GET"]),
        Route("/duplicates", duplicates, methods=["GET"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        Overloaded: _overloaded,
        TorchError: _model_failed,
        ValueError: _bad_value,
        Exception: _internal,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.service = service
    app.state.metrics = service.metrics
    app.state.page = resources.files(__package__).joinpath("page.html").read_text("utf-8")
    wrapped: Any = BodyLimit(app, options.max_body_bytes, options.body_timeout_s)
    if options.api_key is not None:
        wrapped = BearerAuth(wrapped, options.api_key, OPEN_PATHS)
    wrapped = HostCheck(wrapped, allowed_hosts(options.host, options.allowed_hosts))
    return CountRequests(wrapped, service.metrics)


__all__ = ["create_app", "Service"]
