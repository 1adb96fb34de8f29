"""benchmarks/lockstep.py: two benchmark children take turns, one at a time, in the given order."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import lockstep  # noqa: E402

CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {bench!r})
    import lockstep
    assert lockstep.ACTIVE
    lockstep.first_turn()
    name, log, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(turns):
        with open(log, "a") as f:
            f.write(f"{{name}}{{i}}\\n")
        if name == "fail" and i == 1:
            sys.exit(3)
        lockstep.turn()
    print("noise that is not a turn")
    print("RESULT " + json.dumps({{"name": name, "waited": lockstep.waited()}}))
""")


def child(tmp_path: Path, name: str, turns: int) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(bench=str(BENCH)))
    return [sys.executable, str(script), name, str(tmp_path / "log.txt"), str(turns)]


def test_children_take_turns_in_order(tmp_path: Path) -> None:
    results = lockstep.run({"a": child(tmp_path, "a", 3), "b": child(tmp_path, "b", 3)}, first="b")
    assert (tmp_path / "log.txt").read_text().split() == ["b0", "a0", "b1", "a1", "b2", "a2"]
    assert {k: v["name"] for k, v in results.items()} == {"a": "a", "b": "b"}
    assert results["a"]["waited"] > 0 and results["b"]["waited"] > 0  # each waited while the other ran


def test_a_child_with_more_turns_runs_alone_at_the_end(tmp_path: Path) -> None:
    lockstep.run({"a": child(tmp_path, "a", 1), "b": child(tmp_path, "b", 3)}, first="a")
    assert (tmp_path / "log.txt").read_text().split() == ["a0", "b0", "b1", "b2"]


def test_a_failed_child_stops_the_other(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="fail child ended without a result"):
        lockstep.run({"fail": child(tmp_path, "fail", 3), "b": child(tmp_path, "b", 50)}, first="fail")
    assert (tmp_path / "log.txt").read_text().split() == ["fail0", "b0", "fail1"]
