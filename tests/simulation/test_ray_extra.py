"""Without Ray installed, ``--backend ray`` names the extra in one line and builds nothing
(runs whether or not Ray is installed: the import is made to fail)."""

from __future__ import annotations

import sys

import pytest


def test_without_ray_the_cli_names_the_extra_and_makes_no_run_folder(monkeypatch, tmp_path, capsys):
    from pollen.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    runs = tmp_path / "runs"
    code = main(["simulate", "--dataset", "digits", "--parties", "4", "--rounds", "1", "--backend", "ray",
                 "--runs-dir", str(runs), "--name", "r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["pollen simulate: error: the Ray backend (--backend ray) needs the 'ray' package, which is not "
                   "installed. Install it with: pip install 'pollen-fl[ray]'"]
    assert not runs.exists() or not any(runs.iterdir())  # nothing built before the check


def test_without_ray_the_transport_raises_missing_extra(monkeypatch, digits_cfg, tmp_path):
    from pollen.compose import assemble
    from pollen.errors import MissingExtraError
    from pollen.simulation.ray_backend import RayTransport

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'pollen-fl\[ray\]'"):
        RayTransport(assemble(digits_cfg()), tmp_path)
