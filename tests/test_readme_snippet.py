"""The original liteCLIP README snippet, run unchanged against liteclip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import reference
from conftest import CAT

# Verbatim from the original liteCLIP README.
SNIPPET = """\
from liteclip import ZeroShotPipeline

pipeline = ZeroShotPipeline()

predictions = pipeline.predict('examples/cat.jpg',
                               ['a photo of a dog',
                                'a photo of a cat',
                                'the photo of a human baby'
                               ])

for label,prob in predictions:
    print(f"{label}: {prob*100:.2f}%")
"""

LABELS = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]


def test_readme_snippet_runs_unchanged(tmp_path, ref_models, liteclip_ckpt):
    (tmp_path / "model").mkdir()
    (tmp_path / "examples").mkdir()
    shutil.copy(liteclip_ckpt, tmp_path / "model" / "liteclip2.pt")
    shutil.copy(CAT, tmp_path / "examples" / "cat.jpg")

    run = subprocess.run(
        [sys.executable, "-c", SNIPPET], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    printed = {}
    for line in run.stdout.strip().splitlines():
        m = re.fullmatch(r"(.+): (\d+\.\d\d)%", line)
        assert m, f"unexpected line {line!r}"
        printed[m.group(1)] = float(m.group(2))
    assert set(printed) == set(LABELS)

    expected = reference.predict(ref_models["liteclip"], tmp_path / "examples" / "cat.jpg", LABELS)
    # Same order (most probable first) and within 0.5 percentage points.
    assert list(printed) == [label for label, _ in expected]
    for label, p in expected:
        assert abs(printed[label] - 100 * p) <= 0.5, (label, printed[label], 100 * p)
