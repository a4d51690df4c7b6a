"""The photo index (`liteclip.Index`, `liteclip index`, `liteclip search`): results against a
brute-force ranking computed here with numpy, incremental updates, bad input, the writer lock,
SIGKILL then resume, and two gloo ranks against one process."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liteclip
from liteclip import BadIndexError, Index, IndexLockedError
from liteclip import cli as liteclip_cli
from liteclip.distributed import start_local_ranks

from conftest import make_photos


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """The full-size architecture (random weights): seconds of work per run, so that a signal
    sent once the first chunks are committed lands mid-run even on a loaded machine."""
    path = tmp_path_factory.mktemp("ck") / "full"
    liteclip.LiteClip("liteclip", device="cpu", seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return liteclip.LiteClip.load(checkpoint, device="cpu")


def brute_force(model, paths, query, k):
    """The exact ranking, computed here from the model's embeddings with numpy."""
    rows = model.encode_image([str(p) for p in paths])
    q = model.encode_image(query) if isinstance(query, Path) else model.encode_text(query)
    scores = rows @ q[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [(str(paths[i]), float(scores[i])) for i in order]


def assert_same_ranking(got, expected):
    assert [p for p, _ in got] == [p for p, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


def test_search_finds_what_an_exact_ranking_finds(tmp_path, checkpoint, model):
    photos = make_photos(tmp_path / "photos", 14)
    calls = []
    index = Index.build(
        tmp_path / "photos",
        tmp_path / "lib.lcx",
        checkpoint,
        device="cpu",
        batch_size=4,
        progress=calls.append,
    )
    assert [c["done"] for c in calls] == [4, 8, 12, 14]
    assert all(c["to_embed"] == 14 for c in calls)
    report = index.last_report
    assert (report["total"], report["embedded"], report["skipped"]) == (14, 14, [])
    assert len(index) == 14
    root = (tmp_path / "photos").resolve()
    assert Path(index.root) == root and Path(index.checkpoint) == checkpoint.resolve()
    resolved = [p.resolve() for p in photos]
    for query in ["a red photo", "green", Path(photos[4])]:
        got = index.search(query, k=5)
        assert_same_ranking(got, brute_force(model, resolved, query, 5))
        assert all(Path(p).is_absolute() and root in Path(p).parents for p, _ in got)
    # A k beyond the index gives everything; a reopened index gives the same answers.
    assert len(index.search("red", k=100)) == 14
    again = Index.open(tmp_path / "lib.lcx", device="cpu")
    assert again.search("a red photo", k=5) == index.search("a red photo", k=5)


def test_updates_embed_only_new_and_changed_files(tmp_path, checkpoint, model):
    photos = make_photos(tmp_path / "photos", 10)
    index = Index.build(tmp_path / "photos", tmp_path / "lib.lcx", checkpoint, device="cpu")
    report = index.update()
    assert (report["embedded"], report["removed"], report["unchanged"]) == (0, 0, 10)

    # Touched only (same bytes, new time): not embedded again.
    later = time.time() + 100
    os.utime(photos[0], (later, later))
    # Changed, deleted, new.
    Image.new("RGB", (50, 40), (250, 250, 0)).save(photos[1])
    photos[2].unlink()
    new = tmp_path / "photos" / "new.png"
    Image.new("RGB", (30, 30), (0, 250, 250)).save(new)
    report = index.update()
    assert (report["total"], report["embedded"], report["removed"], report["unchanged"]) == (
        10,
        2,
        1,
        8,
    )
    expected = sorted(str(p.resolve()) for p in [*photos[:2], *photos[3:], new])
    assert sorted(index.files()) == expected
    # The changed photo's row is its new embedding.
    got = index.search(Path(photos[1]), k=1)
    assert got[0][0] == str(photos[1].resolve()) and got[0][1] > 0.9999

    # remove() keeps a file out of later updates until add() brings it back.
    assert index.remove([photos[3]]) == 1
    assert str(photos[3].resolve()) not in index.files()
    assert index.update()["embedded"] == 0
    assert str(photos[3].resolve()) not in index.files()
    assert index.add([photos[3]])["embedded"] == 1
    assert str(photos[3].resolve()) in index.files()
    with pytest.raises(ValueError, match="not under"):
        index.add([checkpoint / "config.json"])


def test_paths_mean_what_they_mean_to_the_caller(tmp_path, checkpoint, monkeypatch):
    """Run from the folder above Photos/, as a user would: "Photos/private/a.png" is that
    file, in the API and the CLI alike; a path the index does not hold is an error, never a
    silent no-op that leaves a private photo searchable."""
    make_photos(tmp_path / "Photos", 3)
    private = make_photos(tmp_path / "Photos" / "private", 2)
    monkeypatch.chdir(tmp_path)
    index = Index.build("Photos", "lib.lcx", checkpoint, device="cpu")
    hidden = str(private[0].resolve())
    given = str(private[0].relative_to(tmp_path))  # Photos/private/...
    assert hidden in index.files()
    before = index.generation
    with pytest.raises(ValueError, match="Photos/Photos/private") as caught:
        index.remove([given, "Photos/Photos/private/x.png"])
    assert "nothing was removed" in str(caught.value)
    assert index.generation == before and hidden in index.files()

    assert index.remove([given]) == 1
    assert hidden not in index.files()
    assert all(path != hidden for path, _ in index.search(private[0], k=10))
    assert index.update()["embedded"] == 0 and hidden not in index.files()
    assert index.add([given])["embedded"] == 1
    assert hidden in index.files()
    # A relative path taken from the indexed folder instead of the working one says which to give.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="did you mean"):
        Index.open(tmp_path / "lib.lcx").remove([str(private[0].relative_to(tmp_path / "Photos"))])
    monkeypatch.chdir(tmp_path)

    # The CLI: a whole folder out, and back.
    out = run_cli("index", "Photos", "--index", "lib.lcx", "--remove", "Photos/private", "--json")
    assert json.loads(out)["removed"] == 2
    assert not any("/private/" in p for p in Index.open("lib.lcx").files())
    failed = cli("index", "Photos", "--index", "lib.lcx", "--remove", "Photos/nope.png")
    assert failed.returncode == 1 and "not in the index" in failed.stderr
    report = json.loads(
        run_cli("index", "Photos", "--index", "lib.lcx", "--add", "Photos/private", "--json")
    )
    assert report["embedded"] == 2 and report["size"] == 5


def run_cli(*argv):
    done = cli(*argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bad_files_are_skipped_and_listed_never_fatal(tmp_path, checkpoint):
    root = tmp_path / "photos"
    photos = make_photos(root, 4)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image at all")
    good = photos[0].read_bytes()
    jpeg = photos[1].read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "garbage.webp").write_bytes(os.urandom(3000))
    (root / bytes.fromhex("6361666ee92e706e67").decode("latin-1")).write_bytes(good)
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    os.symlink(root, root / "album0" / "cycle")
    # A file name that is not UTF-8.
    os.close(os.open(os.path.join(os.fsencode(root), b"caf\xe9.jpg"), os.O_CREAT | os.O_WRONLY))

    index = Index.build(root, tmp_path / "lib.lcx", checkpoint, device="cpu")
    report = index.last_report
    skipped = {Path(s["path"]).name: s["error"] for s in report["skipped"]}
    assert report["embedded"] == 5  # four photos and the latin-1 named copy
    for name in ["empty.jpg", "text.png", "truncated.jpg", "garbage.webp"]:
        assert name in skipped, (name, skipped)
    assert any("UTF-8" in error for error in skipped.values())
    # Failures are remembered: an unchanged folder decodes nothing and reports them again.
    again = index.update()
    assert again["embedded"] == 0 and len(again["skipped"]) == len(report["skipped"])


def test_an_empty_folder_and_empty_queries(tmp_path, checkpoint):
    (tmp_path / "empty").mkdir()
    index = Index.build(tmp_path / "empty", tmp_path / "lib.lcx", checkpoint, device="cpu")
    assert len(index) == 0 and index.search("anything", k=3) == []
    for query in ["", "   "]:
        with pytest.raises(ValueError, match="empty"):
            index.search(query)
    with pytest.raises(ValueError):
        index.search("x", k=0)
    with pytest.raises(FileNotFoundError):
        Index.build(tmp_path / "nowhere", tmp_path / "other.lcx", checkpoint)


def test_folders_that_are_not_usable_indexes(tmp_path, checkpoint, nano_ckpt):
    make_photos(tmp_path / "photos", 2)
    with pytest.raises(FileNotFoundError):
        Index.open(tmp_path / "missing.lcx")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(BadIndexError, match="not a liteclip index"):
        Index.open(junk)
    with pytest.raises(BadIndexError, match="not a liteclip index"):
        Index.build(tmp_path / "photos", junk, checkpoint)

    lib = tmp_path / "lib.lcx"
    Index.build(tmp_path / "photos", lib, checkpoint, device="cpu")
    manifest = json.loads((lib / "manifest.json").read_text())
    # Another model: the fingerprint differs (and with another size, the message says so).
    other = liteclip.LiteClip("liteclip-nano", device="cpu", seed=123)
    other.save(tmp_path / "other")
    with pytest.raises(BadIndexError, match="weights"):
        Index.open(lib, checkpoint=tmp_path / "other")
    with pytest.raises(BadIndexError, match="weights"):
        Index.build(tmp_path / "photos", lib, tmp_path / "other")
    with pytest.raises(BadIndexError, match="not"):
        Index.build(tmp_path / "photos" / "album0", lib, checkpoint)

    newer = dict(manifest, version=manifest["version"] + 1)
    (lib / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(BadIndexError, match="newer liteclip"):
        Index.open(lib)
    (lib / "manifest.json").write_text(json.dumps(dict(manifest, embed_dim=7)))
    with pytest.raises(BadIndexError, match="7-d"):
        Index.open(lib).search("x")
    (lib / "manifest.json").write_text('{"format": "liteclip-index", "version": 1, "roo')
    with pytest.raises(BadIndexError, match="damaged"):
        Index.open(lib)
    (lib / "manifest.json").write_text(json.dumps(manifest))
    chunk = next((lib / "chunks").glob("*.json"))
    chunk.unlink()
    with pytest.raises(BadIndexError, match="missing"):
        Index.open(lib)


LOCK_HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, checkpoint):
    make_photos(tmp_path / "photos", 3)
    lib = tmp_path / "lib.lcx"
    index = Index.build(tmp_path / "photos", lib, checkpoint, device="cpu")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(lib / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(IndexLockedError, match="another process"):
            index.update(lock_wait=0.5)
        assert time.monotonic() - started >= 0.5
        with pytest.raises(TimeoutError):
            index.remove([tmp_path / "photos" / "x.png"], lock_wait=0)
        # Readers need no lock.
        assert len(index.search("red", k=2)) == 2
    finally:
        holder.kill()
        holder.wait()
    assert index.update(lock_wait=5)["unchanged"] == 3


def test_signature_and_cli_defaults_are_the_cores():
    from liteclip._liteclip import INDEX_DEFAULTS

    # Every method and function of indexing that takes one of these options has the core's
    # default for it.
    callables = [getattr(Index, name) for name in dir(Index) if not name.startswith("_")]
    callables = [c for c in callables if callable(c)] + [liteclip.index_folder]
    checked = 0
    for function in callables:
        parameters = inspect.signature(function).parameters
        for name, default in INDEX_DEFAULTS.items():
            if name in parameters:
                assert parameters[name].default == default, (function, name)
                checked += 1
    assert checked >= 12, checked  # build, update, add, remove, embed_share, index_folder
    parser = liteclip_cli._parser()
    args = parser.parse_args(["index", "photos", "--index", "lib.lcx"])
    for name, default in INDEX_DEFAULTS.items():
        assert getattr(args, name) == default, name


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "liteclip", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_the_command_line_builds_updates_and_searches(tmp_path, checkpoint, model):
    photos = make_photos(tmp_path / "photos", 6)
    lib = tmp_path / "lib.lcx"
    r = cli("index", tmp_path / "photos", "--index", lib, "--checkpoint", checkpoint, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for key in ["total", "embedded", "removed", "unchanged", "skipped", "seconds"]:
        assert key in report
    assert report["embedded"] == 6
    r = cli("index", tmp_path / "photos", "--index", lib, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unchanged"] == 6

    resolved = [p.resolve() for p in photos]
    r = cli("search", "a blue photo", "--index", lib, "--top-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    got = [(h["path"], h["score"]) for h in json.loads(r.stdout)]
    assert_same_ranking(got, brute_force(model, resolved, "a blue photo", 3))
    r = cli("search", "--image", photos[2], "--index", lib, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["path"] == str(resolved[2])
    r = cli("search", "red", "--index", lib)
    assert r.returncode == 0 and str(tmp_path) in r.stdout

    liteclip.LiteClip("liteclip-nano", device="cpu", seed=5).save(tmp_path / "other")
    r = cli("search", "red", "--index", lib, "--checkpoint", tmp_path / "other")
    assert r.returncode == 1 and "weights" in r.stderr
    r = cli("search", "", "--index", lib)
    assert r.returncode == 1 and "empty" in r.stderr
    r = cli("index", tmp_path / "photos", "--index", tmp_path / "new.lcx")
    assert r.returncode == 1 and "--checkpoint" in r.stderr


@pytest.mark.slow
def test_sigkill_during_indexing_then_resume_gives_the_unbroken_result(tmp_path, full_checkpoint):
    checkpoint = full_checkpoint
    make_photos(tmp_path / "photos", 90)
    unbroken = Index.build(tmp_path / "photos", tmp_path / "whole.lcx", checkpoint, device="cpu")
    lib = tmp_path / "lib.lcx"
    command = ["index", tmp_path / "photos", "--index", lib, "--checkpoint", checkpoint]
    command += ["--batch-size", "4", "--commit-every", "8", "--device", "cpu"]
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "liteclip", *map(str, command)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill once some chunks are committed (or at a random moment if it is quick).
        deadline = time.monotonic() + 60
        before = len(Index.open(lib)) if (lib / "manifest.json").exists() else 0
        while proc.poll() is None and time.monotonic() < deadline:
            if (lib / "manifest.json").exists() and len(Index.open(lib)) >= before + 16:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # Whatever moment it died at, the index is readable.
        assert len(Index.open(lib)) <= 90
    assert kills >= 1
    r = cli(*command, "--json")
    assert r.returncode == 0, r.stderr
    resumed = Index.open(lib, device="cpu")
    assert sorted(resumed.files()) == sorted(unbroken.files())
    for query in ["red", "a green photo", "blue"]:
        assert_same_ranking(resumed.search(query, k=10), unbroken.search(query, k=10))


@pytest.mark.slow
def test_two_gloo_ranks_give_the_same_index_as_one_process(tmp_path, checkpoint):
    make_photos(tmp_path / "photos", 24)
    single = Index.build(tmp_path / "photos", tmp_path / "one.lcx", checkpoint, device="cpu")
    lib = tmp_path / "two.lcx"
    command = [sys.executable, "-m", "liteclip", "index", str(tmp_path / "photos")]
    command += ["--index", str(lib), "--checkpoint", str(checkpoint), "--device", "cpu"]
    command += ["--batch-size", "4", "--json"]
    procs = start_local_ranks(2, command, {"OMP_NUM_THREADS": "1"})
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    report = json.loads(outputs[0][0])
    assert report["ranks"] == 2 and report["embedded"] == 24
    assert outputs[1][0] == ""  # only rank 0 reports
    two = Index.open(lib, device="cpu")
    assert sorted(two.files()) == sorted(single.files())
    for query in ["red", "green", Path(sorted(single.files())[3])]:
        assert_same_ranking(two.search(query, k=8), single.search(query, k=8))
    assert not (lib / "staging").exists()


INTERRUPTED_BUILD = """
import os, signal, sys
import liteclip

photos, lib, checkpoint = sys.argv[1:4]
fired = []
# As in a terminal, whatever the test runner's parent left SIGINT set to.
signal.signal(signal.SIGINT, signal.default_int_handler)


def progress(state):
    # Ctrl-C once two chunks are committed, with most of the folder still to embed.
    if state["done"] >= 8 and not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGINT)


try:
    liteclip.Index.build(
        photos, lib, checkpoint, device="cpu", batch_size=2, commit_every=4, progress=progress
    )
except KeyboardInterrupt:
    print(len(liteclip.Index.open(lib)))
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_embedded_and_the_next_run_continues(tmp_path, checkpoint):
    make_photos(tmp_path / "photos", 60)
    lib = tmp_path / "lib.lcx"
    args = [tmp_path / "photos", lib, checkpoint]
    r = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_BUILD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 130, r.stderr
    kept = int(r.stdout)
    assert 8 <= kept < 60
    command = ["index", tmp_path / "photos", "--index", lib, "--checkpoint", checkpoint]
    r = cli(*command, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["embedded"] == 60 - kept and report["size"] == 60


# --- only files under the root, only while they are what was indexed ---


def png(path: Path, colour: tuple[int, int, int], size: int = 40) -> Path:
    Image.new("RGB", (size, size), colour).save(path)
    return path


def ids_by_path(index: Index) -> dict[str, int]:
    (hits,) = index.search_many(["a photo"], k=len(index))
    return {hit.path: hit.id for hit in hits}


def test_links_that_lead_out_of_the_folder_are_neither_indexed_nor_read(tmp_path, checkpoint):
    photos = tmp_path / "photos"
    make_photos(photos, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = png(outside / "secret.png", (200, 10, 10))
    (photos / "escape.png").symlink_to(secret)
    inside_target = sorted(photos.rglob("*.png"))[0]
    (photos / "alias.png").symlink_to(inside_target)
    (photos / "linked-folder").symlink_to(outside, target_is_directory=True)
    index = Index.build(photos, tmp_path / "lib.lcx", checkpoint, device="cpu")
    files = index.files()
    assert str(photos / "alias.png") in files  # a link to a file inside the folder
    assert str(photos / "escape.png") not in files
    assert not any("linked-folder" in f or "secret" in f for f in files)
    skipped = {s["path"]: s["error"] for s in index.last_report["skipped"]}
    assert "outside the indexed folder" in skipped[str(photos / "escape.png")]

    # After indexing, a photo replaced by a link to a file outside, and one changed in place:
    # neither is read again (a server's /thumb answers 404 for them).
    ids = ids_by_path(index)
    victim, changed, kept = sorted(Path(p) for p in ids if "alias" not in p)[:3]
    stat = victim.stat()
    victim.unlink()
    victim.symlink_to(secret)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns), follow_symlinks=False)
    png(changed, (0, 0, 255), size=33)
    assert index.thumbnail(ids[str(victim)]) is None
    assert index.thumbnail(ids[str(changed)]) is None
    assert index.thumbnail(ids[str(kept)]).startswith(b"\xff\xd8")


def test_index_entries_must_be_plain_paths_inside_the_folder(tmp_path, checkpoint):
    make_photos(tmp_path / "photos", 3)
    lib = tmp_path / "lib.lcx"
    Index.build(tmp_path / "photos", lib, checkpoint, device="cpu")
    chunk = next((lib / "chunks").glob("*.json"))
    original = chunk.read_text()
    for bad in ["../outside/x.png", "/etc/passwd", "album0/../../x.png", "", "a//b.png", "./x"]:
        entries = json.loads(original)
        entries[0]["path"] = bad
        chunk.write_text(json.dumps(entries))
        with pytest.raises(BadIndexError, match="not a plain path inside the indexed folder"):
            Index.open(lib)
    chunk.write_text(original)
    assert len(Index.open(lib)) == 3


def test_rows_that_are_not_finite_make_the_index_damaged_not_the_query(tmp_path, checkpoint):
    make_photos(tmp_path / "photos", 4)
    lib = tmp_path / "lib.lcx"
    Index.build(tmp_path / "photos", lib, checkpoint, device="cpu")
    vectors = next((lib / "chunks").glob("*.npy"))
    rows = np.load(vectors)
    rows[2, 5] = np.nan
    np.save(vectors, rows)
    with pytest.raises(BadIndexError, match=f"damaged chunk {vectors.stem}: row 2") as info:
        Index.open(lib).search("a photo")
    assert "not a finite number" in str(info.value)


def test_index_folder_builds_then_updates_and_index_exists_says_which(tmp_path, checkpoint):
    photos = make_photos(tmp_path / "photos", 4)
    lib = tmp_path / "lib.lcx"
    assert not Index.exists(lib)
    with pytest.raises(ValueError, match="not an index yet"):
        liteclip.index_folder(tmp_path / "photos", lib)
    first = liteclip.index_folder(tmp_path / "photos", lib, checkpoint, device="cpu")
    assert Index.exists(lib) and first["embedded"] == 4
    photos[0].unlink()
    again = liteclip.index_folder(tmp_path / "photos", lib, device="cpu")
    assert (again["embedded"], again["removed"], again["size"]) == (0, 1, 3)
    with pytest.raises(BadIndexError, match="is an index of"):
        liteclip.index_folder(tmp_path, lib, device="cpu")
