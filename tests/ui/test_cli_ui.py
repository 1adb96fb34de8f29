"""The command line: ``pollen ui`` serves a runs folder until Ctrl-C; mistakes in ``--track`` or
the runs folder are one line and exit status 2, before anything runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request

import pytest

from pollen.cli import main

from ui_helpers import need


def test_unknown_tracker_is_refused_before_training(capsys, tmp_path):
    code = main(["simulate", "--dataset", "digits", "--parties", "2", "--rounds", "1", "--no-progress",
                 "--runs-dir", str(tmp_path), "--track", "wandb"])
    err = capsys.readouterr().err
    assert code == 2 and "expected one of mlflow, tensorboard" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing ran


def test_ui_refuses_a_file_as_runs_folder(capsys, tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    assert main(["ui", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_pollen_ui_serves_a_runs_folder_until_ctrl_c(tmp_path):
    need("uvicorn", "ui")
    from pollen.simulation import simulate

    simulate(dataset="digits", parties=2, rounds=1, name="one", runs_dir=str(tmp_path / "runs"), progress=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT as usual in the child (tests/conftest.py un-ignores it in this process)
    proc = subprocess.Popen([sys.executable, "-m", "pollen.cli", "ui", str(tmp_path / "runs"), "--port", "0",
                             "--token-file", str(tmp_path / "tokens.toml")], stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any("serving" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stderr.readline())
        port = int(re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", "".join(lines)).group(1))
        tokens = tomllib.loads((tmp_path / "tokens.toml").read_text())
        read = next(iter(tokens["read"].values()))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/runs", headers={"Authorization": f"Bearer {read}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert [row["name"] for row in json.loads(r.read())] == ["one"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=30)
        assert e.value.code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # never leave a server behind, even when the test failed
                proc.kill()
                proc.wait()
    assert code == 0
