"""Searching an index the way photo-search users ask: what each photo records (EXIF date,
camera, size, GPS), queries of weighted terms, filters, paging and date order, and the output
of `liteclip search`. Expected results are computed here: rankings with numpy from the model's
own embeddings of the files, metadata from what the tests wrote into the files."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liteclip
from liteclip import Index, parse_query
from liteclip import cli as liteclip_cli

from conftest import make_photos
from exif_photos import exif_photo

DATA = Path(__file__).resolve().parent / "data"

# name: (colour, EXIF fields). Photos without a date are dated by their file time.
PHOTOS = {
    "trips/rome.jpg": (
        (210, 40, 40),
        dict(taken="2022-07-14T18:03:22", make="Canon", model="Canon EOS R6", gps=(41.9, 12.5)),
    ),
    "trips/paris.jpg": (
        (40, 200, 60),
        dict(taken="2022-08-01T09:00:00", make="Canon", model="Canon EOS R6", offset="+02:00"),
    ),
    "trips/old/lisbon.jpg": (
        (40, 60, 210),
        dict(taken="2019-05-05T12:00:00", make="Google", model="Pixel 3"),
    ),
    "home/cat.jpg": (
        (220, 200, 40),
        dict(
            taken="2023-01-02T08:00:00",
            make="Google",
            model="Pixel 7",
            orientation=6,
            size=(48, 32),
        ),
    ),
    "home/dog.jpg": (
        (200, 100, 40),
        dict(modified="2021-03-02T10:00:00", make="Apple", model="iPhone 12"),
    ),
    "home/sofa.jpg": ((120, 40, 200), dict(taken="2023-06-30T23:59:59")),
    "scan.jpg": ((90, 90, 90), {}),
    "red.jpg": (
        (230, 20, 20),
        dict(taken="2020-12-31T00:00:00", make="NIKON CORPORATION", model="NIKON D750"),
    ),
    "green.jpg": (
        (20, 230, 20),
        dict(taken="2024-02-29T12:00:00", make="NIKON CORPORATION", model="NIKON D750"),
    ),
}


def local_iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(int(seconds)).isoformat()


@pytest.fixture(scope="module")
def library(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("search") / "photos"
    for seed, (name, (colour, fields)) in enumerate(PHOTOS.items()):
        exif_photo(root / name, colour, seed=seed, **fields)
    Image.new("RGB", (30, 20), (10, 10, 10)).save(root / "plain.png")
    os.utime(root / "plain.png", (1_600_000_000, 1_600_000_000))
    index = Index.build(root, root.parent / "lib.lcx", checkpoint, device="cpu")
    return Path(index.root), index


@pytest.fixture(scope="module")
def model(checkpoint):
    return liteclip.LiteClip.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def embedded(library, model):
    """Every photo's embedding, computed here by the model from the file."""
    root, index = library
    paths = sorted(index.files())
    return paths, model.encode_image(paths)


def expected_info(root: Path, name: str) -> dict:
    """What the index should say of a photo: from the fields written into it."""
    if name == "plain.png":
        return dict(
            taken=local_iso(1_600_000_000),
            taken_from="file_time",
            camera=None,
            width=30,
            height=20,
            gps=None,
        )
    colour, fields = PHOTOS[name]
    width, height = fields.get("size", (48, 32))
    if fields.get("orientation") in (5, 6, 7, 8):
        width, height = height, width
    if "taken" in fields:
        taken, taken_from = fields["taken"] + fields.get("offset", ""), "exif_original"
    elif "modified" in fields:
        taken, taken_from = fields["modified"], "exif_datetime"
    else:
        taken, taken_from = local_iso(os.stat(root / name).st_mtime), "file_time"
    make, model_name = fields.get("make"), fields.get("model")
    camera = (
        model_name
        if make and model_name and model_name.startswith(make.split()[0])
        else (f"{make} {model_name}" if make and model_name else None)
    )
    return dict(
        taken=taken,
        taken_from=taken_from,
        camera=camera,
        width=width,
        height=height,
        gps=fields.get("gps"),
    )


def test_each_photo_records_its_date_camera_size_and_place(library):
    root, index = library
    hits = index.search("a photo", k=len(index))
    assert len(hits) == len(PHOTOS) + 1
    for hit in hits:
        name = Path(hit.path).relative_to(root).as_posix()
        want = expected_info(root, name)
        got = {key: getattr(hit, key) for key in want}
        if want["gps"] is not None:
            assert got["gps"] == pytest.approx(want["gps"], abs=1e-4)
            got["gps"] = want["gps"]
        assert got == want, name
        assert hit.file_size == os.path.getsize(hit.path)
        # It unpacks and compares as (path, score), as search results always have.
        path, score = hit
        assert (path, score) == hit and path == hit.path and score == hit.score


def test_unreadable_exif_is_not_an_error(tmp_path, checkpoint):
    good = exif_photo(tmp_path / "p" / "a.jpg", (200, 0, 0), taken="2022-01-01T00:00:00")
    data = good.read_bytes()
    # An APP1 "Exif" block of garbage right after the start-of-image marker.
    junk = b"Exif\x00\x00" + bytes(range(256)) * 2
    broken = data[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + data[2:]
    (tmp_path / "p" / "b.jpg").write_bytes(broken)
    index = Index.build(tmp_path / "p", tmp_path / "lib.lcx", checkpoint, device="cpu")
    assert index.last_report["skipped"] == [] and len(index) == 2
    by_name = {Path(h.path).name: h for h in index.search("x", k=2)}
    assert by_name["b.jpg"].taken_from == "file_time" and by_name["b.jpg"].width == 48
    assert by_name["a.jpg"].taken == "2022-01-01T00:00:00"


def numpy_ranking(paths, rows, vector):
    vector = vector / np.linalg.norm(vector)
    scores = rows @ vector
    order = np.argsort(-scores, kind="stable")
    return [(paths[i], float(scores[i])) for i in order]


def test_weighted_terms_rank_as_the_normalised_weighted_sum(library, model, embedded):
    root, index = library
    paths, rows = embedded
    cat = str(root / "home" / "cat.jpg")
    query = [("a red photo", 2.0), Path(cat), ("green grass", -1.0)]
    vector = (
        2.0 * model.encode_text("a red photo")[0]
        + rows[paths.index(cat)]
        - model.encode_text("green grass")[0]
    )
    expected = numpy_ranking(paths, rows, vector)
    got = index.search(query, k=len(paths))
    assert [h.path for h in got] == [p for p, _ in expected]
    np.testing.assert_allclose([h.score for h in got], [s for _, s in expected], atol=1e-4)
    # An image that is not in the index is embedded from the file.
    outside = exif_photo(root.parent / "query.jpg", (10, 10, 230), seed=99)
    vector = model.encode_image(outside)[0] - 0.5 * model.encode_text("blue")[0]
    got = index.search([Path(outside), ("blue", -0.5)], k=3)
    assert [h.path for h in got] == [p for p, _ in numpy_ranking(paths, rows, vector)[:3]]


def test_query_syntax():
    assert parse_query("2:a dog + beach.jpg - people") == [
        ("a dog", 2.0),
        ("beach.jpg", 1.0),
        ("people", -1.0),
    ]
    assert parse_query(["a", "red", "car", "-", "0.5:rain"]) == [("a red car", 1.0), ("rain", -0.5)]
    for bad in ["", "a dog +", "a + + b"]:
        with pytest.raises(ValueError):
            parse_query(bad)


def test_terms_that_cancel_out_are_refused(library):
    _, index = library
    with pytest.raises(ValueError, match="cancel"):
        index.search([("a dog", 1.0), ("a dog", -1.0)])


def info_of(root: Path, path: str) -> dict:
    return expected_info(root, Path(path).relative_to(root).as_posix())


FILTERS = [
    dict(after="2022-07-14"),
    dict(before="2022-07-14"),
    dict(after="2022-01-01", before="2022-12-31"),
    dict(under="trips"),
    dict(under="trips/old"),
    dict(camera="canon"),
    dict(camera="d750", after="2021-01-01"),
    dict(under="home", camera="pixel"),
    dict(min_score=0.0),
]


def passes(info: dict, name: str, score: float, f: dict) -> bool:
    day = info["taken"][:10]
    camera = (info["camera"] or "").lower()
    return (
        ("after" not in f or day >= f["after"])
        and ("before" not in f or day <= f["before"])
        and ("under" not in f or name.startswith(f["under"] + "/"))
        and ("camera" not in f or f["camera"] in camera)
        and ("min_score" not in f or score >= f["min_score"])
    )


@pytest.mark.parametrize("f", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_filters_equal_the_filtered_brute_force_ranking(library, model, embedded, f):
    root, index = library
    paths, rows = embedded
    ranking = numpy_ranking(paths, rows, model.encode_text("a warm photo")[0])
    expected = [
        (p, s)
        for p, s in ranking
        if passes(info_of(root, p), Path(p).relative_to(root).as_posix(), s, f)
    ]
    got = index.search("a warm photo", k=4, **f)
    assert [h.path for h in got] == [p for p, _ in expected[:4]]
    # Absolute folders work as well as ones relative to the root.
    if "under" in f:
        again = index.search("a warm photo", k=4, **{**f, "under": str(root / f["under"])})
        assert again == got


def test_pages_are_stable_and_add_up_to_one_long_list(library):
    _, index = library
    everything = index.search("a photo", k=10)
    pages = [index.search("a photo", k=3, offset=o) for o in (0, 3, 6, 9)]
    assert [h for page in pages for h in page] == everything
    assert pages[-1] == everything[9:] and index.search("a photo", k=3, offset=50) == []


def test_date_order_lists_every_match_newest_first(library, model, embedded):
    root, index = library
    paths, rows = embedded
    ranking = numpy_ranking(paths, rows, model.encode_text("a photo")[0])
    threshold = ranking[len(ranking) // 2][1]
    matches = [(p, s) for p, s in ranking if s >= threshold]
    newest_first = sorted(matches, key=lambda m: info_of(root, m[0])["taken"], reverse=True)
    got = index.search("a photo", k=100, sort="date", min_score=threshold)
    assert [h.path for h in got] == [p for p, _ in newest_first]
    second_page = index.search("a photo", k=2, offset=2, sort="date", min_score=threshold)
    assert second_page == got[2:4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(after="14.07.2022"), "YYYY-MM-DD"),
        (dict(before="2022-13-01"), "YYYY-MM-DD"),
        (dict(after="2023-01-01", before="2022-01-01"), "later than"),
        (dict(under="../elsewhere"), "relative to the indexed folder"),
        (dict(under="/somewhere/else"), "not under the indexed folder"),
        (dict(min_score=2.0), "between -1 and 1"),
        (dict(sort="date"), "min_score"),
        (dict(sort="size"), "'score' or 'date'"),
    ],
)
def test_bad_filters_say_what_to_give(library, kwargs, message):
    _, index = library
    with pytest.raises(ValueError, match=message):
        index.search("a photo", **kwargs)


def run_cli(capsys, *argv: str) -> str:
    assert liteclip_cli.main(list(argv)) == 0
    return capsys.readouterr().out


def test_cli_query_terms_filters_and_outputs(library, capsys):
    root, index = library
    lib = str(Path(index.path))
    cat = str(root / "home" / "cat.jpg")
    api = index.search([("a red photo", 2.0), Path(cat), ("green", -1.0)], k=5, under="home")
    out = run_cli(
        capsys,
        "search",
        "2:a",
        "red",
        "photo",
        "+",
        cat,
        "-",
        "green",
        "--index",
        lib,
        "--top-k",
        "5",
        "--under",
        "home",
        "--json",
        "--device",
        "cpu",
    )
    records = json.loads(out)
    assert [r["path"] for r in records] == [h.path for h in api]
    assert [r["score"] for r in records] == pytest.approx([h.score for h in api], abs=1e-6)
    for record in records:
        want = info_of(root, record["path"])
        assert {k: record[k] for k in ("taken", "camera", "width", "height")} == {
            k: want[k] for k in ("taken", "camera", "width", "height")
        }
    out = run_cli(
        capsys,
        "search",
        "a photo",
        "--index",
        lib,
        "--paths-only",
        "--top-k",
        "4",
        "--sort",
        "date",
        "--min-score",
        "-1",
        "--device",
        "cpu",
    )
    assert out.splitlines() == [
        h.path for h in index.search("a photo", k=4, sort="date", min_score=-1.0)
    ]


def test_an_index_of_format_1_is_upgraded_without_embedding_again(tmp_path, checkpoint):
    fixture = tmp_path / "index-v1"
    shutil.copytree(DATA / "index-v1", fixture, copy_function=shutil.copy2)
    weights = tmp_path / "nano-seed0"
    liteclip.LiteClip("liteclip-nano", device="cpu", seed=0).save(weights)
    manifest_path = fixture / "lib.lcx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["version"] == 1
    # The fixture was written elsewhere: point it at this copy, as a user who moved it would.
    manifest["root"] = str((fixture / "photos").resolve())
    manifest["checkpoint"] = str(weights)
    manifest_path.write_text(json.dumps(manifest))
    (chunk,) = (fixture / "lib.lcx" / "chunks").glob("*.npy")
    rows_before = np.load(chunk)

    index = Index.open(fixture / "lib.lcx", device="cpu")
    before = index.search("a photo", k=3)
    assert len(before) == 3 and all(h.taken is None for h in before)
    report = index.update()
    assert report["embedded"] == 0 and report["size"] == 3
    assert json.loads(manifest_path.read_text())["version"] == 2
    after = {Path(h.path).name: h for h in index.search("a photo", k=3)}
    assert after["a.jpg"].taken == "2022-07-14T18:03:22"
    assert after["a.jpg"].camera == "Canon EOS R6"
    assert after["a.jpg"].gps == pytest.approx((52.52, 13.405), abs=1e-3)
    assert after["b.jpg"].taken == "2021-03-02T10:00:00" and after["b.jpg"].width == 24
    assert after["c.png"].taken_from == "file_time"
    # The rows are the ones the old index held: nothing was embedded again.
    (chunk,) = (fixture / "lib.lcx" / "chunks").glob("*.npy")
    np.testing.assert_array_equal(np.load(chunk), rows_before)
    again = index.search("a photo", k=3)
    assert [h.path for h in again] == [h.path for h in before]
    np.testing.assert_allclose([h.score for h in again], [h.score for h in before], atol=1e-6)


def brute_force_groups(paths: list[str], rows: np.ndarray, threshold: float) -> set[frozenset]:
    """Connected components of "cosine >= threshold", from every pair, computed here."""
    scores = rows @ rows.T
    parent = list(range(len(paths)))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(*np.nonzero(scores >= threshold)):
        if a < b:
            parent[root(a)] = root(b)
    groups: dict[int, set[str]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(root(i), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def test_duplicate_groups_equal_the_pairwise_components(tmp_path, checkpoint, model):
    from conftest import REAL_IMAGES

    root = tmp_path / "photos"
    root.mkdir()
    for image in REAL_IMAGES:
        (root / image.name).write_bytes(image.read_bytes())
    original = Image.open(REAL_IMAGES[0]).convert("RGB")
    w, h = original.size
    original.resize((w // 2, h // 2)).save(root / "copy-small.jpg", quality=90)
    original.save(root / "copy-recompressed.jpg", quality=30)
    original.crop((w // 40, h // 40, w - w // 40, h - h // 40)).save(root / "copy-cropped.png")
    Image.open(REAL_IMAGES[1]).convert("RGB").save(root / "second-copy.jpg", quality=50)
    index = Index.build(root, tmp_path / "lib.lcx", checkpoint, device="cpu")
    paths = sorted(index.files())
    rows = model.encode_image(paths)
    scores = np.sort((rows @ rows.T)[np.triu_indices(len(paths), 1)])
    # Thresholds in the middle of clear gaps between pair scores (no pair sits on one).
    gaps = [(b - a, (a + b) / 2) for a, b in zip(scores, scores[1:]) if b - a > 2e-4]
    thresholds = [t for _, t in sorted(gaps, reverse=True)[:4]] + [float(scores[-1]) - 1e-3]
    seen_groups = 0
    for threshold in thresholds:
        groups = index.duplicates(threshold=threshold)
        got = {frozenset([g["keep"], *g["duplicates"]]) for g in groups}
        assert got == brute_force_groups(paths, rows, threshold), threshold
        seen_groups += len(groups)
        for group in groups:
            # The keeper: most pixels, then the oldest.
            def rank(path: str) -> tuple:
                with Image.open(path) as image:
                    pixels = image.size[0] * image.size[1]
                return (-pixels, os.stat(path).st_mtime, path)

            assert group["keep"] == min([group["keep"], *group["duplicates"]], key=rank)
    assert seen_groups > 0
    # The command line gives the same groups.
    out = liteclip_cli.main(
        [
            "duplicates",
            "--index",
            str(tmp_path / "lib.lcx"),
            "--threshold",
            str(thresholds[0]),
            "--json",
        ]
    )
    assert out == 0
    with pytest.raises(ValueError, match="cosine"):
        index.duplicates(threshold=1.5)


def test_the_duplicate_threshold_default_is_one_definition():
    import inspect

    from liteclip._liteclip import DUPLICATE_THRESHOLD

    signature = inspect.signature(Index.duplicates)
    assert signature.parameters["threshold"].default == DUPLICATE_THRESHOLD
    args = liteclip_cli._parser().parse_args(["duplicates", "--index", "lib.lcx"])
    assert args.threshold == DUPLICATE_THRESHOLD


def test_duplicates_with_nothing_set_group_identical_copies(tmp_path, checkpoint, model, capsys):
    """`index.duplicates()` and `liteclip duplicates --index LIB`, no threshold given: a photo
    and its byte-for-byte and pixel-for-pixel copies are one group whatever the model, and the
    groups are the pairwise components at the documented default of 0.95."""
    root = tmp_path / "photos"
    make_photos(root, 8)
    original = sorted(root.rglob("*.png"))[0]
    shutil.copy(original, root / "same-bytes.png")
    Image.open(original).save(root / "same-pixels.png", compress_level=1)
    index = Index.build(root, tmp_path / "lib.lcx", checkpoint, device="cpu")
    groups = index.duplicates()
    copies = {
        str(p.resolve()) for p in [original, root / "same-bytes.png", root / "same-pixels.png"]
    }
    assert any(copies <= {g["keep"], *g["duplicates"]} for g in groups)
    paths = sorted(index.files())
    rows = model.encode_image(paths)
    got = {frozenset([g["keep"], *g["duplicates"]]) for g in groups}
    assert got == brute_force_groups(paths, rows, 0.95)
    assert liteclip_cli.main(["duplicates", "--index", str(tmp_path / "lib.lcx"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["groups"]
    assert {frozenset([g["keep"], *g["duplicates"]]) for g in printed} == got
