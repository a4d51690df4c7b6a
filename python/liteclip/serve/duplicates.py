"""Near-duplicate groups for the server (`GET /duplicates`), found off the request path.

Grouping a large library takes a while (seconds at 20,000 photos, minutes at a million, and a
search graph built first where none is saved), so a request never waits for it: the first asks
for the groups at a threshold and gets 202 ("computing"), the work runs on a thread of its own
over an `Index` of its own (searches are not held up behind it, and its copy of the rows is let
go when the job ends), and later requests get the groups, kept until the index changes."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from .. import Index


class DuplicateFinder:
    """Runs `Index.duplicates` in the background, one job at a time, and keeps the results of
    the index generation they were computed for."""

    KEEP = 4  # results kept (a few thresholds tried in turn)

    def __init__(self, index_path: str, model: Any) -> None:
        self._index_path = index_path
        self._model = model
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "liteclip-duplicates")
        self._jobs: dict[tuple[int, float], concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def groups(self, generation: int, threshold: float) -> list[dict[str, Any]] | None:
        """The groups at `threshold` for the index at `generation`, or None while they are
        being computed. A failure of the job is raised here."""
        key = (generation, threshold)
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                for old in [k for k in self._jobs if k[0] != generation]:
                    self._jobs.pop(old).cancel()
                while len(self._jobs) >= self.KEEP:
                    self._jobs.pop(next(iter(self._jobs))).cancel()
                job = self._executor.submit(self._compute, threshold)
                self._jobs[key] = job
        if not job.done():
            return None
        return job.result()

    def _compute(self, threshold: float) -> list[dict[str, Any]]:
        # An Index of the job's own, let go when it ends: the rows (and a graph, if one is
        # built) are held twice only while groups are being found.
        index = Index.open(self._index_path, checkpoint=self._model)
        found = index.duplicates(threshold)
        paths = [p for group in found for p in (group["keep"], *group["duplicates"])]
        ids = iter(index.ids_of(paths))

        def tile(path: str) -> dict[str, Any]:
            id_ = next(ids)
            return {"path": path, "thumb": None if id_ is None else f"/thumb/{id_}"}

        return [
            {"keep": tile(g["keep"]), "duplicates": [tile(p) for p in g["duplicates"]]}
            for g in found
        ]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["DuplicateFinder"]
