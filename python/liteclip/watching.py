"""Keeping an index current with its folder (`liteclip index --watch`, `liteclip serve --watch`).

The platform's file events (through `watchfiles`, on inotify, FSEvents or ReadDirectoryChangesW)
say *that* something under the folder changed; each burst of events is then followed by one
incremental update, which finds *what* changed the way every update does, by each file's size
and time: new, changed, deleted and renamed photos alike, including changes whose events were
lost. With no event for `rescan_every` seconds the folder is rescanned anyway, the safety net
for file systems whose events are unreliable (network mounts) or a watch limit reached.

An update in progress when the watch is told to stop commits what it has embedded and returns.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from ._liteclip import IMAGE_EXTENSIONS, INDEX_DEFAULTS, Index, IndexLockedError

log = logging.getLogger("liteclip.watch")

#: Seconds between rescans of the whole folder when no event came.
RESCAN_EVERY = 600.0
#: An event burst is taken as over after this long without another event (milliseconds)...
QUIET_MS = 500
#: ...or after this long in all, for a burst that does not end (a long copy).
LONGEST_BURST_MS = 5000

Report = Callable[[dict[str, Any]], Any]


class FolderEvents:
    """A thread that watches `root` for changes to images and folders (not to `ignore`, the
    index's own folder, nor hidden files) and sets `changed` after each burst of them."""

    def __init__(self, root: str | Path, ignore: str | Path, stop: threading.Event) -> None:
        try:
            import watchfiles
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "watching a folder needs watchfiles: pip install 'liteclip[watch]'",
                name="watchfiles",
            ) from None
        self._watch = watchfiles.watch
        self.root = Path(root).resolve()
        self.ignore = Path(ignore).resolve()
        self.stop = stop
        self.changed = threading.Event()
        #: Why events stopped coming, if they did (updates then come from rescans only).
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="liteclip-watch", daemon=True)
        self._started = threading.Event()

    def start(self) -> FolderEvents:
        self._thread.start()
        self._started.wait(10)
        return self

    def relevant(self, _change: Any, path: str) -> bool:
        p = Path(path)
        if p == self.ignore or self.ignore in p.parents:
            return False
        try:
            parts = p.relative_to(self.root).parts
        except ValueError:
            return False
        if any(part.startswith(".") for part in parts):
            return False  # hidden, as the index's scan passes them over
        # An image; or a folder (moved or deleted with its photos); or a path that is gone
        # (it may have been a folder: it no longer tells).
        return p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS or p.is_dir() or not p.exists()

    def _run(self) -> None:
        try:
            changes = self._watch(
                self.root,
                watch_filter=self.relevant,
                stop_event=self.stop,
                debounce=LONGEST_BURST_MS,
                step=QUIET_MS,
                rust_timeout=1000,
                yield_on_timeout=True,
                raise_interrupt=False,
            )
            for burst in changes:
                self._started.set()
                if burst:
                    self.changed.set()
        except Exception as error:  # noqa: BLE001 - the rescans carry on without events
            self.failure = f"{type(error).__name__}: {error}"
            log.warning("file events stopped (%s); rescanning every time instead", self.failure)
        finally:
            self._started.set()

    def wait(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for a burst of changes (or the stop). Returns whether
        changes came; the flag is cleared for the next wait."""
        step = 0.2
        waited = 0.0
        while waited < timeout and not self.stop.is_set():
            if self.changed.wait(min(step, timeout - waited)):
                self.changed.clear()
                return True
            waited += step
        return False

    def join(self) -> None:
        self._thread.join(timeout=10)


def stopping(stop: threading.Event, progress: Report | None = None) -> Report:
    """A progress callback that stops the update it is given to (after its current batch,
    which is committed) once `stop` is set, and passes the state on to `progress`."""

    def check(state: dict[str, Any]) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        if progress is not None:
            progress(state)

    return check


def keep_current(
    index: Index,
    events: FolderEvents,
    *,
    rescan_every: float = RESCAN_EVERY,
    batch_size: int = INDEX_DEFAULTS["batch_size"],
    commit_every: int = INDEX_DEFAULTS["commit_every"],
    lock_wait: float = INDEX_DEFAULTS["lock_wait"],
    on_update: Report | None = None,
) -> None:
    """Updates `index` after every burst of `events` and every `rescan_every` seconds without
    one, until `events.stop` is set. `on_update` gets each update's report (with `"trigger"`:
    `"events"` or `"rescan"`)."""
    if not rescan_every > 0:
        raise ValueError(f"rescan_every must be a positive number of seconds, got {rescan_every}")
    progress = stopping(events.stop)
    while not events.stop.is_set():
        trigger = "events" if events.wait(rescan_every) else "rescan"
        if events.stop.is_set():
            break
        try:
            report = index.update(
                batch_size=batch_size,
                progress=progress,
                lock_wait=lock_wait,
                commit_every=commit_every,
            )
        except KeyboardInterrupt:
            if events.stop.is_set():
                break  # what was embedded is committed
            raise
        except IndexLockedError as error:
            # Another process is writing the index: try again after it (the wait was the pace).
            log.warning("%s; trying again", error)
            events.changed.set()
            continue
        report["trigger"] = trigger
        if on_update is not None:
            on_update(report)


__all__ = ["FolderEvents", "RESCAN_EVERY", "keep_current", "stopping"]
