"""Every option the entry points share has its effect on every path: the Python API, the command
line, `liteclip serve` and `liteclip index` under torchrun. Each case compares what the path
produced with what the library computes with that option, on inputs where the option makes a
visible difference (a large JPEG, where `decode="fast"` decodes at a reduced scale; int8
against fp32), so that an option dropped on the way fails the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liteclip
from liteclip import Index, LiteClip, ZeroShotPipeline
from liteclip.distributed import start_local_ranks

from conftest import CAT
from serving import LABELS, Server, files

pytestmark = pytest.mark.slow  # a dozen subprocesses (about 2 minutes)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three large noisy JPEGs: scaled decoding visibly changes their embeddings."""
    root = tmp_path_factory.mktemp("big-photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def expected(checkpoint, photos):
    """The library's own embeddings of the photos (sorted by name) under each setting."""
    paths = [str(p) for p in sorted(photos.glob("*.jpg"))]

    def embed(**options) -> np.ndarray:
        return LiteClip.load(checkpoint, device="cpu", **options).encode_image(paths)

    rows = {
        "exact": embed(),
        "fast": embed(decode="fast"),
        "int8": embed(precision="int8"),
        "int8+fast": embed(precision="int8", decode="fast"),
    }
    # Each option must change the result here, or the comparisons below prove nothing.
    for a, b in [("exact", "fast"), ("exact", "int8"), ("int8", "int8+fast")]:
        assert np.abs(rows[a] - rows[b]).max() > 1e-3, (a, b)
    return rows


def run_cli(*args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "liteclip", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def index_rows(lib: Path) -> np.ndarray:
    """The index's rows in the order of their files' names."""
    by_name = {}
    for entries_file in (lib / "chunks").glob("*.json"):
        entries = json.loads(entries_file.read_text())
        rows = np.load(entries_file.with_suffix(".npy"))
        for entry, row in zip(entries, rows):
            by_name[entry["path"]] = row
    return np.stack([by_name[name] for name in sorted(by_name)])


def assert_rows(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=what)


@pytest.mark.parametrize(
    "setting, flags",
    [("fast", ["--decode", "fast"]), ("int8", ["--precision", "int8"])],
)
def test_cli_embed_and_index(checkpoint, photos, expected, tmp_path, setting, flags):
    out = tmp_path / "rows.npy"
    run_cli("embed", photos, "--checkpoint", checkpoint, "--output", out, "--device", "cpu", *flags)
    order = [Path(p).name for p in json.loads(out.with_suffix(".json").read_text())["items"]]
    rows = np.load(out)[np.argsort(order)]
    assert_rows(rows, expected[setting], f"liteclip embed {flags}")
    lib = tmp_path / "lib.lcx"
    run_cli("index", photos, "--index", lib, "--checkpoint", checkpoint, "--device", "cpu", *flags)
    assert_rows(index_rows(lib), expected[setting], f"liteclip index {flags}")


def test_api_index_build_and_its_batch_size(checkpoint, photos, expected, tmp_path):
    done = []
    Index.build(
        photos,
        tmp_path / "lib.lcx",
        checkpoint,
        device="cpu",
        decode="fast",
        batch_size=2,
        progress=lambda state: done.append(state["done"]),
    )
    assert_rows(index_rows(tmp_path / "lib.lcx"), expected["fast"], "Index.build(decode=fast)")
    # Two batches (2 + 1 images): the progress reports each.
    assert [d for d in done if d > 0][:2] == [2, 3], done


def test_torchrun_index(checkpoint, photos, expected, tmp_path):
    lib = tmp_path / "lib.lcx"
    command = [sys.executable, "-m", "liteclip", "index", str(photos), "--index", str(lib)]
    command += ["--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "1"]
    command += ["--decode", "fast", "--precision", "int8", "--json"]
    procs = start_local_ranks(2, command, {"OMP_NUM_THREADS": "1"})
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert_rows(index_rows(lib), expected["int8+fast"], "torchrun index --decode --precision")


def test_serve(checkpoint, photos, expected, tmp_path):
    s = Server(
        ["--checkpoint", str(checkpoint), "--decode", "fast", "--precision", "int8"],
        tmp_path / "log",
    )
    try:
        uploads = [("image", (p.name, p.read_bytes())) for p in sorted(photos.glob("*.jpg"))]
        got = np.array(s.client.post("/embed/image", files=uploads).json()["embeddings"])
        assert_rows(got, expected["int8+fast"], "serve --decode fast --precision int8")
        # The template reaches the pipeline: the probabilities of ZeroShotPipeline with it.
        template = "a drawing of {}"
        data = {**LABELS, "template": template}
        answer = s.client.post("/predict", data=data, files=files(image=CAT)).json()
        pipe = ZeroShotPipeline(checkpoint, device="cpu", precision="int8", decode="fast")
        want = pipe.predict(str(CAT), LABELS["labels"], hypothesis_template=template)
        got = [(p["label"], p["probability"]) for p in answer["predictions"]]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
    finally:
        assert s.stop() == 0


def test_cli_predict_template_and_precision(checkpoint):
    labels = ["a cat", "a dog", "a car"]
    template = "a drawing of {}"
    out = run_cli(
        "predict", CAT, *labels, "--checkpoint", checkpoint, "--device", "cpu",
        "--hypothesis-template", template, "--precision", "int8", "--json",
    )  # fmt: skip
    got = {p["label"]: p["probability"] for p in json.loads(out)}
    pipe = ZeroShotPipeline(checkpoint, device="cpu", precision="int8")
    want = dict(pipe.predict(str(CAT), labels, hypothesis_template=template))
    plain = dict(ZeroShotPipeline(checkpoint, device="cpu").predict(str(CAT), labels))
    assert max(abs(want[k] - plain[k]) for k in labels) > 1e-4  # both options show
    for label in labels:
        assert abs(got[label] - want[label]) < 1e-5, label


def test_api_pipeline_and_model_options(checkpoint, photos, expected):
    photo = str(sorted(photos.glob("*.jpg"))[0])
    model = LiteClip.load(checkpoint, device="cpu", precision="int8", decode="fast")
    assert_rows(model.encode_image([photo]), expected["int8+fast"][:1], "LiteClip.load")
    pipe = ZeroShotPipeline(checkpoint, device="cpu", precision="int8", decode="fast")
    assert_rows(pipe.model.encode_image([photo]), expected["int8+fast"][:1], "ZeroShotPipeline")
    assert liteclip.preprocess(photo, decode="fast").shape == (3, 224, 224)
