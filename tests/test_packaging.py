"""The wheel: `maturin build` makes one that installs into a fresh virtual environment with only
`pip install <wheel>` (torch comes as a dependency) and runs the README snippet there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_readme_snippet import SNIPPET

from conftest import CAT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_the_snippet(tmp_path, liteclip_ckpt):
    maturin = Path(sys.executable).with_name("maturin")
    if not maturin.exists():
        pytest.fail("maturin is not installed in this environment (make develop installs it)")
    dist = tmp_path / "dist"
    env = dict(
        os.environ, LIBTORCH_USE_PYTORCH="1", VIRTUAL_ENV=str(Path(sys.executable).parents[1])
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    subprocess.run(
        [str(maturin), "build", "--release", "--auditwheel", "skip", "--out", str(dist)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    (wheel,) = dist.glob("liteclip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "liteclip/serve/page.html" in archive.namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "work"
    (work / "model").mkdir(parents=True)
    (work / "examples").mkdir()
    shutil.copy(liteclip_ckpt, work / "model" / "liteclip2.pt")
    shutil.copy(CAT, work / "examples" / "cat.jpg")
    run = subprocess.run(
        [str(python), "-c", SNIPPET],
        cwd=work,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith("%") for line in lines)
    # The console script is installed too.
    cli = subprocess.run([str(venv / "bin" / "liteclip"), "--help"], env=clean, capture_output=True)
    assert cli.returncode == 0
    # Without the `serve` extra, the server says what to install.
    serve = subprocess.run(
        [str(venv / "bin" / "liteclip"), "serve", "--checkpoint", str(work / "model")],
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert serve.returncode == 1 and "liteclip[serve]" in serve.stderr, serve.stderr
