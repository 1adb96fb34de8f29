"""The seeds' tables in their --quick form: the hospitals (alone, pooled, FedAvg, with SecAgg and
DP-SGD) and the CIFAR-10 seed's table (run on digits), each a complete table with its checks."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_hospitals_quick_table(tmp_path):
    compare = runpy.run_path(str(EXAMPLES / "hospitals" / "compare.py"))
    assert compare["main"](["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "hospitals-quick.json").read_text())["rows"]
    assert list(rows) == ["hospital A alone", "hospital B alone", "hospital C alone", "pooled records (centralised)",
                          "FedAvg", "FedAvg + SecAgg", "FedAvg + DP-SGD (ε = 8)", "FedAvg + DP-SGD (ε = 8) + SecAgg"]
    for label, runs in rows.items():
        (r,) = runs
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["f1"] <= 1.0 and r["bce"] > 0, label
        assert (r["epsilon"] is not None) == ("DP-SGD" in label), label
        if "DP-SGD" in label:
            assert 0 < r["epsilon"] <= 8.0 + 1e-6  # the accountant's ε never exceeds the target
    assert rows["FedAvg"][0]["bytes"] > 0 and rows["pooled records (centralised)"][0]["bytes"] == 0
    assert rows["FedAvg + SecAgg"][0]["bytes"] > rows["FedAvg"][0]["bytes"]  # masks and shares cost bytes
    text = (tmp_path / "hospitals-quick.md").read_text()
    assert "| FedAvg + DP-SGD (ε = 8) + SecAgg |" in text


def test_cifar_rows_by_label_or_short_name():
    compare = runpy.run_path(str(EXAMPLES / "cifar10" / "compare.py"))
    rows, parse = list(compare["ROWS"]), compare["parse_rows"]
    assert parse("all") == (rows, [])
    assert parse(rows[2]) == ([rows[2]], [])  # a label with commas in it is one row
    assert parse(f"{rows[2]},{rows[0]}") == ([rows[2], rows[0]], [])
    assert parse("compressed, dp8,dp4") == (rows[2:], [])
    assert parse("fedavg,nonsense") == ([rows[1]], ["nonsense"])
    assert compare["main"](["--rows", "nonsense"]) == 2
    with pytest.raises(SystemExit) as exit_:  # the labels' "%" signs do not break --help
        compare["main"](["--help"])
    assert exit_.value.code == 0


def test_cifar_seed_table_quick(tmp_path):
    compare = runpy.run_path(str(EXAMPLES / "cifar10" / "compare.py"))
    out = tmp_path / "t.jsonl"
    assert compare["main"](["--quick", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(compare["ROWS"])
    by = {r["row"]: r for r in rows}
    assert by["centralised"]["comm_ratio"] is None and by["centralised"]["epsilon"] is None
    fed = by["federated (FedAvg)"]
    assert fed["rounds"] == 2 and fed["comm_ratio"] > 0 and fed["epsilon"] is None
    assert by["federated, compressed (top-k 1 % + EF up, int8 down)"]["comm_ratio"] < fed["comm_ratio"] / 3
    for eps in (8, 4):
        r = by[f"federated + DP (ε = {eps})"]
        assert 0 < r["epsilon"] <= eps + 1e-6
    assert all(r["where"].endswith("thread") or r["where"].endswith("threads") for r in rows)  # the CPU ran them
    md = out.with_suffix(".md").read_text()
    assert "communication / data" in md and "ε ≤ 8" in md and f"({rows[0]['where']})" in md
    # a row run on its own later replaces its older self and keeps the other rows in the table
    assert compare["main"](["--quick", "--out", str(out), "--rows", "centralised"]) == 0
    assert len(out.read_text().splitlines()) == len(rows) + 1
    md = out.with_suffix(".md").read_text()
    assert all(f"| {label} |" in md for label in compare["ROWS"]) and md.count("| centralised |") == 1


def test_femnist_table_quick_and_its_rows(tmp_path):
    compare = runpy.run_path(str(EXAMPLES / "femnist" / "compare.py"))
    recipe = compare["row_config"]("recipe", {"dataset": "femnist"}, quick=False)  # the preset as it is
    assert recipe["data"]["partition"] == "natural" and recipe["data"]["parties"] == 3383
    assert (recipe["federation"]["rounds"], recipe["federation"]["parties_per_round"]) == (500, 20)
    short = compare["row_config"]("recipe-short", {"dataset": "femnist"}, quick=False)
    assert (short["federation"]["rounds"], short["federation"]["parties_per_round"]) == (10, 5)
    assert short["model"] == recipe["model"] and short["strategy"] == recipe["strategy"]
    long = compare["row_config"]("seed-long", {"dataset": "femnist"}, quick=False)
    assert (long["federation"]["rounds"], long["strategy"]["name"]) == (500, "fedavg")

    out = tmp_path / "f.jsonl"
    assert compare["main"](["--quick", "--dataset", "digits", "--parties", "30", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(compare["ROWS"])
    assert all(r["rounds"] == 2 and r["clients_per_round"] == 2 and 0 <= r["accuracy"] <= 1 for r in rows)
    md = out.with_suffix(".md").read_text()
    assert "a stand-in, not EMNIST: digits" in md and md.count("| the ") == len(rows)
    assert compare["main"](["--rows", "nonsense"]) == 2
