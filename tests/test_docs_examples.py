"""Every Python and shell example in README.md and the documentation (docs/) runs as a reader
would run it: in one working folder holding what the examples name (the sample photos, a small
captioned set, a class folder, a trained liteclip-nano as the demo's model, and that model in
the original release's place, `model/liteclip2.pt`), in the order they appear.

Python examples are collected by pytest-examples, shell examples by mktestdocs. An example
that cannot run here says why in its fence (```python test="skip" reason="..."```) and is
reported as skipped with that reason; one marked `needs="server"` runs against a `liteclip
serve` started for it. Every `--flag` the docs name is checked against the CLI's parser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mktestdocs
import pytest
from pytest_examples import CodeExample, find_examples

import liteclip
from liteclip import cli, datasets

from conftest import CAT, REAL_IMAGES
from serving import Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^ *```(\S*)(.*)$", re.M)


def python_examples() -> list[CodeExample]:
    return [example for path in DOCS for example in find_examples(path)]


def shell_examples() -> list[tuple[str, str, dict[str, str]]]:
    """(id, source, settings) of every `bash` block, in order. mktestdocs collects the blocks
    of each exact info string; the settings of each info string are read from the fences."""
    found = []
    for path in DOCS:
        text = path.read_text()
        infos = [m.group(1) + m.group(2) for m in FENCE.finditer(text) if m.group(1) == "bash"]
        seen: dict[str, list[str]] = {}
        for info in infos:
            if info not in seen:
                seen[info] = mktestdocs.grab_code_blocks(text, lang=info)
            source = seen[info].pop(0)
            settings = dict(re.findall(r'(\w+)="([^"]*)"', info))
            found.append((f"{path.name}-{len(found)}", source, settings))
    return found


PYTHON = python_examples()
SHELL = shell_examples()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, liteclip_ckpt) -> Path:
    """What the examples name, as a reader who ran `make demo` in a folder with photos has;
    `model/liteclip2.pt` is a randomly initialised full model saved as the original release
    was (`torch.save(state_dict)` of the PyTorch module)."""
    work = tmp_path_factory.mktemp("reader")
    (work / "examples").mkdir()
    shutil.copy(CAT, work / "examples" / "cat.jpg")
    for name, source in [("cat.jpg", CAT), ("a.jpg", REAL_IMAGES[0]), ("b.jpg", REAL_IMAGES[1])]:
        shutil.copy(source, work / name)
    shutil.copy(REAL_IMAGES[2], work / "query.jpg")
    for i, photo in enumerate(REAL_IMAGES):
        (work / "Photos" / f"20{20 + i}").mkdir(parents=True)
        shutil.copy(photo, work / "Photos" / f"20{20 + i}" / photo.name)
    (work / "Photos" / "private").mkdir()
    shutil.copy(REAL_IMAGES[3], work / "Photos" / "private" / "a.jpg")
    datasets.make_shapes(work / "flickr8k", n_images=60, seed=0)
    datasets.make_shapes(work / "classes", n_images=48, seed=1, layout="folders")
    demo = datasets.make_shapes(work / "runs" / "demo" / "data" / "train", n_images=60, seed=2)
    demo_run = work / "runs" / "demo" / "run"
    liteclip.train(
        demo,
        demo_run,
        model="liteclip-nano",
        epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    (work / "model").mkdir()
    shutil.copy(liteclip_ckpt, work / "model" / "liteclip2.pt")
    # The index the serving examples serve (the examples also build it, in their order).
    liteclip.Index.build(work / "Photos", work / "photos.lcx", demo_run / "best", device="cpu")
    return work


def _skip_reason(settings: dict[str, str]) -> str | None:
    if settings.get("test") != "skip":
        return None
    assert settings.get("reason"), "an example that is not run must say why (reason=...)"
    return settings["reason"]


@pytest.mark.parametrize("example", PYTHON, ids=str)
def test_python_example(example: CodeExample, workdir: Path, monkeypatch) -> None:
    reason = _skip_reason(example.prefix_settings())
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(workdir)
    code = compile(example.source, str(example), "exec")
    exec(code, {"__name__": "__main__"})


@pytest.mark.parametrize("example", SHELL, ids=[e[0] for e in SHELL])
def test_shell_example(example, workdir: Path, tmp_path: Path) -> None:
    _, source, settings = example
    reason = _skip_reason(settings)
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = None
    if settings.get("needs") == "server":
        # The server the block before started, on a port of the OS's choosing.
        server = Server(
            [
                "--checkpoint",
                str(workdir / "runs" / "demo" / "run" / "best"),
                "--index",
                str(workdir / "photos.lcx"),
            ],
            tmp_path / "serve.log",
        )
        source = source.replace("localhost:8000", server.url.removeprefix("http://"))
        source = source.replace("curl ", "curl --fail-with-body --silent --show-error ", -1)
        source = source.replace("/thumb/1 ", f"/thumb/{_some_id(server)} ")
    try:
        done = subprocess.run(
            ["bash", "-e", "-u", "-o", "pipefail", "-c", source],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        if server is not None:
            assert server.stop() == 0
    assert done.returncode == 0, f"{source}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def _some_id(server: Server) -> int:
    thumb = server.client.get("/search", params={"q": "a photo", "k": 1}).json()
    return int(thumb["results"][0]["thumb"].rsplit("/", 1)[1])


def test_every_shell_block_is_run_or_says_why() -> None:
    for path in DOCS:
        fences = [m for m in FENCE.finditer(path.read_text()) if m.group(1) in ("sh", "shell")]
        assert not fences, f"{path.name}: write shell examples as ```bash so that they are run"
    # The tools collected every block there is (an opening fence per block, with a language).
    for language, collected in [("bash", SHELL), ("python", PYTHON)]:
        fences = [m for path in DOCS for m in FENCE.finditer(path.read_text())]
        assert sum(m.group(1) == language for m in fences) == len(collected), language


# Flags of other programs that the README shows beside liteclip's.
OTHER_PROGRAMS = {
    "--nproc_per_node",  # torchrun
    "--nnodes",
    "--node_rank",
    "--master_addr",
    "--master_port",
    "--release",  # cargo / maturin
    "--example",
    "--auditwheel",
    "--speed-only",  # the precision benchmark
    "--fail-with-body",  # curl
    "--data-urlencode",
    "--check",  # cargo fmt
    "--accum-freq",  # open_clip's names for what liteclip's options do
    "--gather-with-grad",
    "--train-num-samples",
}


def _cli_flags() -> dict[str, set[str]]:
    parser = cli._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    flags = {
        name: {s for a in p._actions for s in a.option_strings} for name, p in commands.items()
    }
    flags[""] = {s for a in parser._actions for s in a.option_strings}
    return flags


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_docs_name_only_flags_the_cli_has(path: Path) -> None:
    flags = _cli_flags()
    every = set().union(*flags.values())
    text = path.read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text))
    unknown = sorted(named - every - OTHER_PROGRAMS)
    assert not unknown, f"{path.name} names flags no liteclip command has: {unknown}"
    # And each `liteclip COMMAND ...` line uses flags of that command.
    for line in re.findall(r"^liteclip (\w+)(.*)$", text, re.M):
        command, rest = line
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest.split("#")[0]):
            assert flag in flags[command], f"liteclip {command} has no {flag}"
