"""HTTP-only concerns that wrap the whole app: the Host check, the request body's size and pace,
and the API key."""

from __future__ import annotations

import hmac
import json
import socket
from typing import Any, Callable

import anyio
from starlette.exceptions import HTTPException

from . import openai_api

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]


async def send_error(
    scope: Scope, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON error answer: `{"error": message}`, or OpenAI's error object under its API."""
    shaped: Any = {"error": message}
    if scope.get("path", "").startswith(openai_api.PREFIX):
        shaped = openai_api.error_body(message, status)
    body = json.dumps(shaped).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _BodyRefused(HTTPException):
    """Raised from inside the app's body reads: the app's own HTTP error handling answers it
    (the app may be parsing a form when the limit is passed), else the middleware does."""


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413: at once when Content-Length says so,
    otherwise as soon as the streamed body passes the limit (nothing bigger is ever buffered).
    A body whose next part takes more than `timeout` seconds to come is answered 408, so that
    a client that sends half a body and stalls does not hold the server (or its shutdown)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _message(self) -> str:
        return f"the request body is larger than the limit of {self.max_bytes / 1e6:g} MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(scope, send, 413, self._message())
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            with anyio.move_on_after(self.timeout) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise _BodyRefused(
                    408, f"the request body stalled: nothing came for {self.timeout:g} s"
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyRefused(413, self._message())
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRefused as refused:
            if not started:
                await send_error(scope, send, refused.status_code, refused.detail)


def authorized(scope: Scope, expected: bytes) -> bool:
    """Whether the request carries `expected` as its Authorization header, compared in
    constant time (the comparison does not tell how much of a guess was right)."""
    given = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(given, expected)


class BearerAuth:
    """With an API key, every path but the open ones needs `Authorization: Bearer KEY`."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            if not authorized(scope, self.expected):
                await send_error(
                    scope,
                    send,
                    401,
                    "this server needs an API key: send `Authorization: Bearer KEY`",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        await self.app(scope, receive, send)


#: Names of this machine's loopback interface, always allowed in the Host header.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(bound: str, extra: tuple[str, ...]) -> frozenset[str]:
    """The names a Host header may give: the loopback names, the bound address, and `extra`.
    Bound to every interface (0.0.0.0, ::), the machine's own name and addresses are added."""
    names = {*LOOPBACK_NAMES, bound, *extra}
    if bound in ("0.0.0.0", "::", ""):
        hostname = socket.gethostname()
        names |= {hostname, socket.getfqdn()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    return frozenset(n.lower().strip("[]") for n in names if n)


def host_name(header: bytes) -> str:
    """The name in a Host header, without the port: `[::1]:8000` -> `::1`."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


class HostCheck:
    """Answers only requests whose Host header names this server. Without it a web page on any
    site could make a browser on this machine call the server through a name that the site
    resolves to 127.0.0.1 (DNS rebinding) and read the answers: search results, thumbnails."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed
        self.any = "*" in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any:
            header = dict(scope["headers"]).get(b"host")
            if header is None or host_name(header) not in self.allowed:
                await send_error(
                    scope,
                    send,
                    400,
                    "this server does not answer for that Host name; its operator can allow "
                    "one with --allowed-host NAME",
                )
                return
        await self.app(scope, receive, send)
