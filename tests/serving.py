"""A `liteclip serve` child process for the server tests, and request helpers."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx

LABELS = {"labels": ["a cat", "a dog"]}


class Server:
    """A `liteclip serve` child process on 127.0.0.1 and a port the OS picked."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        command = [sys.executable, "-m", "liteclip", "serve", "--port", "0", "--device", "cpu"]
        self.proc = subprocess.Popen(
            command + ["--no-access-log", *args],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 120
        while True:
            text = log.read_text()
            if "listening on http://" in text:
                self.url = text.split("listening on ", 1)[1].split()[0]
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start:\n{text}")
            time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.client.get("/healthz").raise_for_status()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if hasattr(self, "client"):
                self.client.close()

    def health(self) -> dict:
        return self.client.get("/healthz").json()


def files(**fields):
    return {k: (Path(v).name, Path(v).read_bytes()) for k, v in fields.items()}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
