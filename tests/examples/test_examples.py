"""The example apps (examples/hospitals, examples/diabetes): each learns in a short simulation, its
primary metric is in the run's history and summary, and make_data.py rewrites the committed CSVs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

import pollen
from pollen.app import Context, load_app
from pollen.errors import ConfigError
from pollen.metrics import auc, mae

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOSPITALS, DIABETES = EXAMPLES / "hospitals", EXAMPLES / "diabetes"
CSVS = {HOSPITALS: ("hospital_a.csv", "hospital_b.csv", "hospital_c.csv", "test.csv"),
        DIABETES: ("clinic_a.csv", "clinic_b.csv", "clinic_c.csv", "clinic_d.csv", "test.csv")}


def _simulate(folder: Path, tmp_path: Path, rounds: int) -> tuple[list[dict], dict]:
    result = pollen.simulate(app=str(folder / "app.py"), rounds=rounds, runs_dir=str(tmp_path), name="t",
                             progress=False, threads=1)
    return result.history, json.loads((result.run_dir / "summary.json").read_text())


def _party_targets(folder: Path) -> torch.Tensor:
    app = runpy.run_path(str(folder / "app.py"))
    return torch.cat([app["read_records"](folder / name)[1] for name in CSVS[folder][:-1]])


def test_hospitals_learn_auc_well_above_chance(tmp_path):
    history, summary = _simulate(HOSPITALS, tmp_path, rounds=3)
    assert [r["round"] for r in history] == [1, 2, 3]
    assert all(isinstance(r["auc"], float) for r in history)  # the coordinator's AUC, every round
    assert history[-1]["fed_auc"] is not None  # and the hospitals' held-out records, after the last
    assert (summary["primary_metric"], summary["higher_is_better"]) == ("auc", True)
    assert summary["metric_names"] == ["auc", "f1", "accuracy"]
    assert "auc" in summary["metric_notes"]  # AUC is not decomposable: the report says how it is combined
    # the trivial baseline: one score for every patient ranks nobody, AUC 0.5
    y_test = runpy.run_path(str(HOSPITALS / "app.py"))["read_records"](HOSPITALS / "test.csv")[1]
    chance = auc(torch.zeros_like(y_test), y_test)
    assert chance == 0.5
    assert history[-1]["auc"] > chance + 0.3


def test_diabetes_beats_predicting_the_mean(tmp_path):
    history, summary = _simulate(DIABETES, tmp_path, rounds=8)
    assert all(isinstance(r["mae"], float) and isinstance(r["r2"], float) for r in history)
    assert (summary["primary_metric"], summary["higher_is_better"]) == ("mae", False)
    # the trivial baseline: every test patient gets the mean progression of the clinics' patients
    y_test = runpy.run_path(str(DIABETES / "app.py"))["read_records"](DIABETES / "test.csv")[1]
    mean = _party_targets(DIABETES).mean()
    baseline = mae(torch.full_like(y_test, float(mean)), y_test)
    assert history[-1]["mae"] < 0.9 * baseline
    assert history[-1]["r2"] > 0.1


@pytest.mark.parametrize("folder", [HOSPITALS, DIABETES], ids=["hospitals", "diabetes"])
def test_a_deployed_party_reads_only_the_file_it_is_given(folder, tmp_path):
    app = load_app(str(folder / "app.py"))
    cfg = pollen.make_config(dict(app.config))
    sites = CSVS[folder][:-1]
    lengths = {name: len((folder / name).read_text().splitlines()) - 1 for name in sites}
    for i, name in enumerate(sites):
        ctx = Context(str(i), len(sites), folder / name, 0, torch.device("cpu"), config=cfg)
        x, y = app.load_data(ctx)
        assert x.shape[0] == y.shape[0] == lengths[name]
        assert y.shape == (lengths[name], 1) and y.dtype == torch.float32  # shaped like the model's outputs
        assert app.build_model(ctx)(x).shape == y.shape
    wrong = Context("0", len(sites) + 1, None, 0, torch.device("cpu"), config=cfg)
    with pytest.raises(ConfigError, match=f"--parties {len(sites)}"):
        app.load_data(wrong)


@pytest.mark.parametrize("folder", [HOSPITALS, DIABETES], ids=["hospitals", "diabetes"])
def test_make_data_rewrites_the_committed_csvs_byte_for_byte(folder, tmp_path, capsys):
    pytest.importorskip("sklearn")
    runpy.run_path(str(folder / "make_data.py"))["main"](tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CSVS[folder])
    for name in CSVS[folder]:
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
