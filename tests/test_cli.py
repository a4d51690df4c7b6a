"""The `liteclip` command line: help, exit codes, and each command on small inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from liteclip import cli, datasets


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "liteclip", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "embed", "search", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: liteclip" in capsys.readouterr().out


def test_usage_error_exit_code(capsys):
    for argv in (["predict"], ["fly"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == cli.EXIT_USAGE
    # The module entry point (`python -m liteclip`) exits with the same codes.
    assert run("fly").returncode == cli.EXIT_USAGE


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_train_evaluate_predict(tmp_path):
    data = datasets.make_shapes(tmp_path / "data", n_images=40, seed=0, image_size=32)
    test = datasets.make_shapes(
        tmp_path / "test", n_images=24, seed=1, image_size=32, layout="folders"
    )
    out = tmp_path / "run"
    r = run(
        "train",
        data,
        "--output",
        out,
        "--model",
        "liteclip-nano",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["best_checkpoint"].endswith("best")
    assert len(result["history"]) == 1

    r = run("evaluate", out / "best", "--json")
    assert r.returncode == 0, r.stderr
    assert {"i2t_r1", "t2i_r10", "loss"} <= set(json.loads(r.stdout))

    r = run(
        "evaluate", out / "best", "--zero-shot", test, "--templates", "a drawing of a {}", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 24

    image = next((data / "Images").iterdir())
    r = run(
        "predict", image, "a red circle", "a blue square", "--checkpoint", out / "best", "--json"
    )
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    assert len(ranking) == 2 and abs(sum(x["probability"] for x in ranking) - 1) < 1e-5


@pytest.mark.slow  # several CLI processes: the full suite runs it
def test_errors_exit_1_with_a_message(tmp_path):
    r = run("predict", tmp_path / "missing.jpg", "a", "b", "--checkpoint", tmp_path / "none")
    assert r.returncode == 1
    assert "error" in r.stderr and "none" in r.stderr
    r = run("train", tmp_path / "nowhere", "--output", tmp_path / "o")
    assert r.returncode == 1 and "nowhere" in r.stderr


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_embed_and_search(tmp_path):
    data = datasets.make_shapes(tmp_path / "data", n_images=30, seed=0, image_size=32)
    out = tmp_path / "run"
    assert (
        run(
            "train",
            data,
            "--output",
            out,
            "--model",
            "liteclip-nano",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--no-progress",
        ).returncode
        == 0
    )
    images = data / "Images"
    (images / "broken.png").write_bytes(b"not a png")
    r = run(
        "embed",
        images,
        "--checkpoint",
        out / "best",
        "--output",
        tmp_path / "img.npy",
        "--batch-size",
        "8",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 30 and len(summary["skipped"]) == 1

    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\na blue square\n")
    r = run("embed", captions, "--checkpoint", out / "best", "--output", tmp_path / "txt.npy")
    assert r.returncode == 0, r.stderr
    import numpy as np

    assert np.load(tmp_path / "txt.npy").shape == (2, 128)

    r = run(
        "search",
        "a red circle",
        "--index",
        tmp_path / "img.npy",
        "--checkpoint",
        out / "best",
        "--top-k",
        "3",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(h["item"].endswith(".png") for h in hits)
    r = run("search", "x", "--index", tmp_path / "missing.npy", "--checkpoint", out / "best")
    assert r.returncode == 1 and "missing.npy" in r.stderr
