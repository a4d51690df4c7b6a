"""The notebooks run top to bottom in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inference.ipynb", "training.ipynb"])
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Stored without outputs, so that git diffs stay readable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    shutil.copytree(NOTEBOOKS.parent / "examples", tmp_path / "examples")
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # Each notebook draws at least one figure.
    assert any("image/png" in o.get("data", {}) for o in outputs)
