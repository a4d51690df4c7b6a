"""`liteclip serve`: zero-shot prediction, embeddings and photo search over HTTP, with a web page.

>>> from liteclip.serve import ServeOptions, serve
>>> serve(ServeOptions(checkpoint="runs/exp/best", index="photos.lcx"))  # until SIGTERM/Ctrl-C

`create_app(options)` gives the ASGI app itself, to mount in another server. Needs the `serve`
extra: `pip install 'liteclip[serve]'` (Starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
from typing import Any, Callable

from .options import ServeOptions

__all__ = ["ServeOptions", "create_app", "serve"]


def _web_stack() -> Any:
    # Imported on use: `liteclip serve --help` and the options work without the web stack.
    try:
        import uvicorn  # noqa: F401

        from . import app

        # python-multipart (Starlette's form parser) is imported by Starlette only on use.
        if not any(importlib.util.find_spec(m) for m in ("python_multipart", "multipart")):
            raise ModuleNotFoundError("No module named 'python_multipart'", name="python-multipart")
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"liteclip serve needs the web stack ({error.name} is missing): "
            "pip install 'liteclip[serve]'",
            name=error.name,
        ) from None
    return app


def create_app(options: ServeOptions) -> Any:
    """The ASGI app: model (and index) loaded, body limit and API key applied."""
    return _web_stack().create_app(options)


def _listen(host: str, port: int) -> socket.socket:
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def _stop_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(options: ServeOptions, announce: Callable[[str], None] | None = None) -> int:
    """Loads the model (and index), listens, and answers until SIGTERM or Ctrl-C. SIGTERM lets
    the requests in flight finish (for up to `shutdown_timeout_s`), then returns 0."""
    options = options.checked()
    app = create_app(options)
    import uvicorn

    sock = _listen(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    (announce or _to_stderr)(f"liteclip serve: listening on http://{shown}:{port}")
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=options.access_log,
        # Requests in flight get this long after SIGTERM; then their connections are closed.
        timeout_graceful_shutdown=options.shutdown_timeout_s,
    )
    # uvicorn finishes the requests in flight on SIGTERM and then raises the signal again;
    # this handler turns that into a clean exit (status 0) instead of death by signal.
    signal.signal(signal.SIGTERM, _stop_quietly)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
