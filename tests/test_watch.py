"""A folder that stays indexed: `liteclip index --watch` and `liteclip serve --watch` pick up a
new, a changed, a deleted and a renamed photo while running, and stop on SIGTERM or Ctrl-C
with the index committed (exit 0)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("watchfiles", reason="--watch needs the watch extra")


from liteclip import Index  # noqa: E402
from liteclip.watching import FolderEvents, keep_current  # noqa: E402

from conftest import REAL_IMAGES, make_photos  # noqa: E402

DEADLINE_S = 60


def photo(path: Path, seed: int) -> Path:
    """A photo unlike the generated ones (striped, in its own colours)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[:, ::8] = rng.integers(0, 255, 3)
    pixels[::6] = rng.integers(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def wait_for(condition, what: str, log: Path | None = None):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    detail = log.read_text() if log is not None else ""
    raise AssertionError(f"not seen within {DEADLINE_S} s: {what}\n{detail}")


def indexed(lib: Path) -> set[str]:
    """The indexed photos' paths relative to the indexed folder."""
    index = Index.open(lib, device="cpu")
    return {str(Path(p).relative_to(index.root)) for p in index.files()}


def top_hit_of_image(lib: Path, path: Path) -> tuple[str, float]:
    """The best hit for `path`'s current bytes, embedded now (not the index's stored row)."""
    hit = Index.open(lib, device="cpu").search(path.read_bytes(), k=1)[0]
    return hit.path, hit.score


def changes_and_checks(root: Path, lib: Path, log: Path) -> None:
    """Adds, changes, deletes and renames photos under `root`, and waits for the index to say
    each was applied."""
    base = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    new = photo(root / "new" / "fresh.png", seed=1)
    changed = next(p for p in sorted(root.rglob("*.jpg")))
    deleted = next(p for p in sorted(root.rglob("*.png")) if p != new)
    renamed = next(p for p in sorted(root.rglob("*.jpg")) if p != changed)
    moved_to = root / "moved" / "renamed.jpg"
    moved_to.parent.mkdir()
    photo(changed, seed=2)  # same name, new content
    deleted.unlink()
    os.rename(renamed, moved_to)
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    expected = (base - {rel(deleted), rel(renamed)}) | {rel(new), rel(moved_to)}
    wait_for(lambda: indexed(lib) == expected, f"the index holding {sorted(expected)}", log)
    # The changed photo was embedded again: its new content finds it as itself.
    path, score = top_hit_of_image(lib, changed)
    assert path == str(changed.resolve()) and score > 0.999, (path, score)
    path, score = top_hit_of_image(lib, new)
    assert path == str(new.resolve()) and score > 0.999


def start(command: list[str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "liteclip", *command],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    wait_for(lambda: "watching" in log.read_text() or proc.poll() is not None, "watching", log)
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.mark.slow  # a --watch process: the full suite runs it
def test_index_watch_applies_new_changed_deleted_and_renamed_photos(tmp_path, checkpoint):
    root, lib, log = tmp_path / "photos", tmp_path / "lib.lcx", tmp_path / "log"
    make_photos(root, 5)
    command = ["index", str(root), "--index", str(lib), "--checkpoint", str(checkpoint)]
    proc = start(command + ["--watch", "--json", "--device", "cpu"], log)
    try:
        assert len(indexed(lib)) == 5
        changes_and_checks(root, lib, log)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert "stopped" in log.read_text()
    reports = [json.loads(line) for line in out.splitlines()]
    assert reports[0]["embedded"] == 5
    assert sum(r["embedded"] for r in reports[1:]) >= 3  # new, changed, renamed
    assert sum(r["removed"] for r in reports[1:]) >= 2  # deleted, renamed


@pytest.mark.slow  # a --watch process: the full suite runs it
def test_ctrl_c_in_the_middle_of_an_update_commits_what_it_embedded(tmp_path, checkpoint):
    root, lib, log = tmp_path / "photos", tmp_path / "lib.lcx", tmp_path / "log"
    make_photos(root, 3)
    command = ["index", str(root), "--index", str(lib), "--checkpoint", str(checkpoint)]
    proc = start(command + ["--watch", "--device", "cpu", "--batch-size", "1"], log)
    try:
        for n in range(40):  # a burst the update takes a while over (one photo a batch)
            shutil.copy(REAL_IMAGES[n % len(REAL_IMAGES)], root / f"copy{n:02d}.jpg")
        wait_for(lambda: len(indexed(lib)) > 3, "the update under way", log)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()
    # Whatever was embedded is in the index, readable, and the next update finishes the rest.
    done = indexed(lib)
    assert 3 < len(done) <= 43
    index = Index.open(lib, device="cpu")
    assert index.update()["size"] == 43


@pytest.mark.slow  # a --watch process: the full suite runs it
def test_serve_watch_makes_new_photos_searchable_and_drops_deleted_ones(tmp_path, checkpoint):
    pytest.importorskip("starlette", reason="the server needs the serve extra")
    from serving import Server

    root, lib = tmp_path / "photos", tmp_path / "lib.lcx"
    make_photos(root, 4)
    Index.build(root, lib, checkpoint, device="cpu")
    photo(root / "before-start.png", seed=3)  # added while the server was down
    s = Server(["--index", str(lib), "--watch"], tmp_path / "serve.log")
    try:
        size = lambda: s.health()["index_size"]  # noqa: E731
        wait_for(lambda: size() == 5, "the photo added before the start", s.log)
        new = photo(root / "later" / "new.png", seed=4)
        wait_for(lambda: size() == 6, "the new photo", s.log)
        hits = s.client.get("/search", params={"q": "later/new.png", "k": 1}).json()["results"]
        assert hits[0]["path"] == str(new.resolve()) and hits[0]["score"] > 0.999
        (root / "before-start.png").unlink()
        wait_for(lambda: size() == 5, "the deleted photo gone", s.log)
    finally:
        assert s.stop() == 0, s.log.read_text()


def test_watch_refuses_what_it_cannot_do(tmp_path, checkpoint):
    from liteclip.cli import main

    make_photos(tmp_path / "photos", 1)
    assert (
        main(["index", str(tmp_path / "photos"), "--index", str(tmp_path / "x.lcx"), "--watch"])
        == 1
    )
    args = ["index", str(tmp_path / "photos"), "--index", str(tmp_path / "x.lcx"), "--watch"]
    assert main([*args, "--checkpoint", str(checkpoint), "--rescan-every", "0"]) == 1
    with pytest.raises(SystemExit):  # --watch with --add or --remove: a usage error
        main([*args, "--add", str(tmp_path / "photos")])
    from liteclip.serve.options import ServeOptions

    with pytest.raises(ValueError, match="--index"):
        ServeOptions(checkpoint=str(checkpoint), watch=True).checked()


def test_rescans_keep_the_index_current_when_file_events_fail(tmp_path, checkpoint):
    """Without file events (a watch limit reached, a network mount), the periodic rescan alone
    applies changes, and says that it is what did."""
    root = tmp_path / "photos"
    make_photos(root, 2)
    index = Index.build(root, tmp_path / "lib.lcx", checkpoint, device="cpu")
    stop = threading.Event()
    events = FolderEvents(root, index.path, stop)

    def no_events(*args, **kwargs):
        raise OSError("OS file watch limit reached")

    events._watch = no_events
    events.start()
    assert "watch limit" in events.failure
    reports: list[dict] = []
    keeper = threading.Thread(
        target=keep_current,
        args=(index, events),
        kwargs=dict(rescan_every=0.5, on_update=reports.append),
    )
    keeper.start()
    try:
        photo(root / "new.png", seed=5)
        wait_for(lambda: any(r["embedded"] for r in reports), "a rescan embedding new.png")
    finally:
        stop.set()
        keeper.join(30)
    assert not keeper.is_alive()
    assert {r["trigger"] for r in reports} == {"rescan"}
    assert "new.png" in indexed(tmp_path / "lib.lcx")
