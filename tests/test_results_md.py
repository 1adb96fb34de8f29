"""benchmarks/RESULTS.md is assembled from benchmarks/results/*.md: the two must agree."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_md_is_the_assembled_parts():
    build = runpy.run_path(str(ROOT / "benchmarks" / "build_results.py"))["build"]
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == build(), (
        "benchmarks/RESULTS.md differs from its parts: edit benchmarks/results/<part>.md, then run "
        "python benchmarks/build_results.py")
