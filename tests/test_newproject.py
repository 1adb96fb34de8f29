"""``pollen new``: the generated project runs as written (simulation and the write-sites helper), and
a non-empty folder is refused unless forced."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pollen
from pollen.cli import main
from pollen.data import read_tensors
from pollen.errors import ConfigError
from pollen.newproject import FILES, write_project


def test_write_project_fills_in_the_name(tmp_path):
    folder = write_project(str(tmp_path / "clinic-study"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    for file in FILES:
        text = (folder / file).read_text()
        assert "clinic-study" in text and "${" not in text, file
    assert 'path = "app.py"' in (folder / "config.toml").read_text()
    compile((folder / "app.py").read_text(), "app.py", "exec")


def test_generated_project_simulates_from_its_folder(tmp_path):
    pytest.importorskip("sklearn")  # the generated app trains on scikit-learn's digits
    folder = write_project(str(tmp_path / "proj"))
    done = subprocess.run([sys.executable, "-m", "pollen.cli", "simulate", "--config", "config.toml", "--rounds", "2",
                           "--no-progress", "--threads", "1"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (run,) = (folder / "runs").iterdir()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2]
    assert len(history[-1]["parties"]) == 4  # config.toml's parties
    assert history[-1]["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert json.loads((run / "summary.json").read_text())["app"] == str((folder / "app.py").resolve())


def test_write_sites_writes_files_the_app_reads_in_deployment(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    folder = write_project(str(tmp_path / "proj"))
    done = subprocess.run([sys.executable, "app.py", "write-sites", "sites/"], cwd=folder, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    sites = sorted((folder / "sites").iterdir())
    assert [p.name for p in sites] == [f"site{i}.npz" for i in range(4)]
    tables = [read_tensors(p) for p in sites]
    assert sum(len(t) for t in tables) == 1797 - 360  # every training digit once; the test digits stay out
    assert all(t.x.shape[1:] == (64,) and t.task == "classification" for t in tables)
    # a simulation whose parties read those files, as deployed parties do (ctx.data_path); config.toml's
    # relative app path is read from the current folder
    monkeypatch.chdir(folder)
    result = pollen.simulate("config.toml", rounds=1, data_dir="sites/site{party}.npz", progress=False, threads=1)
    assert result.history[-1]["num_examples"] == pytest.approx(0.8 * (1797 - 360), abs=4)  # minus --holdout 0.2


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"proj.*--force"):
        write_project(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    write_project(str(folder), force=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "notes.txt"])
    assert (folder / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_project(str(empty)) == empty  # an empty folder is fine


def test_pollen_new_command(tmp_path, capsys):
    assert main(["new", str(tmp_path / "p")]) == 0
    assert "pollen simulate --config config.toml" in capsys.readouterr().out
    assert main(["new", str(tmp_path / "p")]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err
