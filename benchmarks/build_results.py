"""Assemble benchmarks/RESULTS.md from the status summary and each workload's detail file.

    python benchmarks/build_results.py

The detail files under benchmarks/results/ are written (and rewritten) by whoever runs a workload;
RESULTS.md is never edited by hand, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
PARTS = ["summary.md", "w3-strategies.md", "robustness.md", "w4-grpc.md", "w5-secagg.md", "w6-privacy.md",
         "he-and-attacks.md", "w6-privacy-v2.md", "w6-privacy-v3.md", "w6-privacy-v4.md", "w8-compression.md", "flood.md", "vertical.md", "w3-tuned.md", "dashboard.md",
         "scale.md", "seeds.md"]


def build() -> str:
    out = [(HERE / "results" / PARTS[0]).read_text().rstrip("\n") + "\n"]
    for name in PARTS[1:]:
        text = (HERE / "results" / name).read_text().rstrip("\n") + "\n"
        if text.startswith("# "):
            text = "#" + text  # the file's title becomes a section of RESULTS.md
        out.append("\n---\n\n" + text)
    return "".join(out)


if __name__ == "__main__":
    (HERE / "RESULTS.md").write_text(build())
