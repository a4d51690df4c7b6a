"""`GET /metrics` in the Prometheus text format: requests and their latency per endpoint, the
batches the model ran (sizes, per kind of request), the requests waiting for the model and the
index's rows. Each app has its own registry, so that several apps in one process (tests, an
app mounted in another server) do not share counters."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from .app import Service

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

# The endpoints counted by name; any other path counts as "other", so that a client requesting
# made-up paths cannot grow the number of series without bound.
ENDPOINTS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/predict",
        "/embed/text",
        "/embed/image",
        "/search",
        "/duplicates",
        "/v1/embeddings",
        "/v1/models",
    }
)


def endpoint_of(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/thumb/"):
        return "/thumb/{id}"
    return "other"


class Metrics:
    """The server's series, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "liteclip_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "liteclip_request_seconds",
            "Time from a request's arrival to the end of its answer, by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "liteclip_batch_size",
            "Requests answered by one model call, by kind of request",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge(
            "liteclip_queue_depth",
            "Requests waiting for the model, by kind of request",
            ["kind"],
            registry=r,
        )
        self.index_rows = Gauge(
            "liteclip_index_rows", "Photos in the served index (0 without one)", registry=r
        )

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    async def exposition(self, service: Service) -> bytes:
        """The text a scrape gets, with the gauges read now."""
        for kind, batcher in service.batchers.items():
            self.queue_depth.labels(kind).set(batcher.waiting())
        rows = 0
        if service.index is not None:
            rows = await anyio.to_thread.run_sync(len, service.index)
        self.index_rows.set(rows)
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: counts every answer (refusals by the outer layers included) and times
    it, by endpoint and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            endpoint = endpoint_of(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    text = await request.app.state.metrics.exposition(service)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


__all__ = ["CountRequests", "Metrics", "endpoint_of", "metrics"]
