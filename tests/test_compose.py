"""One place where a run is assembled (pollen/compose.py), and what it guarantees every mode."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Calls that assemble a run; only the composition root makes them (a test or a library user may).
ASSEMBLING = {"Coordinator", "LocalParty", "Checkpointer", "Pipeline", "PartyTables", "ProcessPoolTransport"}
ALLOWED = {
    "pollen/compose.py": ASSEMBLING,
    "pollen/simulation/run.py": {"ProcessPoolTransport"},  # the transport it drives (built from the Assembly)
    "pollen/transforms/base.py": {"Pipeline"},  # the class's own helpers (empty_pipeline, pipeline_of)
    "pollen/client/party.py": {"PartyTables"},  # a hand-built party's default: no extra task kinds or hooks
}


def _calls(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in ASSEMBLING:
                found.add(name)
    return found


def test_no_mode_assembles_a_run_on_its_own():
    """simulate, the process pool, pollen server and client, the benchmarks: all go through compose."""
    files = [*ROOT.glob("pollen/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    offenders = {}
    for path in files:
        rel = str(path.relative_to(ROOT))
        extra = _calls(path) - ALLOWED.get(rel, set())
        if extra:
            offenders[rel] = sorted(extra)
    assert not offenders, f"assembled outside pollen/compose.py: {offenders}"


def test_every_mode_goes_through_assemble(monkeypatch, digits_cfg, tmp_path):
    """Count the Assemblies built: simulation, the server and a gRPC party each build theirs."""
    import pollen.compose as compose

    made = []
    real = compose.Assembly.__init__

    def counting(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(compose.Assembly, "__init__", counting)
    from pollen.simulation import simulate

    simulate(digits_cfg(federation={"rounds": 1}))
    assert len(made) == 1
    from pollen.transport.rpc.party import PartyOptions, build_party

    folder = tmp_path / "shard"
    from pollen.data import load_dataset, partition, write_shards

    ds = load_dataset("digits")
    write_shards(ds, partition(ds, "iid", 4, 0), folder, scheme="iid", seed=0)
    cfg = digits_cfg()
    party = build_party(PartyOptions("1", "localhost:1", str(folder / "party1")), {"config": cfg.to_dict()})
    assert len(made) == 2 and party.num_examples > 0


def test_the_seeded_initial_model_does_not_depend_on_other_threads_building_models(digits_cfg):
    """Parties embedded in a program build their models while the coordinator seeds its own: the
    initial model must be the seeded one (this race made the SecAgg-over-gRPC parity test fail
    inside the full suite)."""
    from pollen.compose import assemble

    asm = assemble(digits_cfg(model={"model": "mlp"}))
    want = asm.initial_state()
    stop = threading.Event()

    def build_models():
        while not stop.is_set():
            asm.new_model()

    others = [threading.Thread(target=build_models) for _ in range(2)]
    for t in others:
        t.start()
    try:
        got = [asm.initial_state() for _ in range(20)]
    finally:
        stop.set()
        for t in others:
            t.join()
    for state in got:
        for k in want:
            np.testing.assert_array_equal(state[k], want[k])


def test_a_reused_run_name_is_refused_unless_overwritten(digits_cfg):
    from pollen.errors import RunError
    from pollen.simulation import simulate

    cfg = digits_cfg(federation={"rounds": 1})
    first = simulate(cfg)
    with pytest.raises(RunError, match="already holds a run.*--overwrite"):
        simulate(cfg)
    again = simulate(digits_cfg(federation={"rounds": 2}), overwrite=True)
    assert again.run_dir == first.run_dir and [r["round"] for r in again.history] == [1, 2]
    summary = json.loads((again.run_dir / "summary.json").read_text())
    assert "centralized" not in summary  # nothing of the old run's summary is mixed in


def test_an_overwritten_run_does_not_inherit_the_old_runs_party_state(digits_cfg):
    """Personal models (Ditto), private layers and control variates live in the run folder: a run
    that replaces another under the same name starts from none of them (same seed: same history)."""
    from pollen.simulation import simulate

    cfg = digits_cfg(federation={"rounds": 2, "parties_per_round": 4}, strategy={"name": "ditto"})
    first = simulate(cfg)
    assert any((first.run_dir / "party_state").iterdir())  # the personal models were stored there
    again = simulate(cfg, overwrite=True)
    for key in ("accuracy", "fed_accuracy"):  # the coordinator's model and the personal models
        assert [r.get(key) for r in again.history] == [r.get(key) for r in first.history], key
    assert first.history[-1].get("fed_accuracy") is not None


def test_resume_with_more_rounds_extends_a_finished_run(digits_cfg):
    from pollen.compose import resume_config
    from pollen.errors import ConfigError
    from pollen.simulation import simulate

    full = simulate(digits_cfg(federation={"rounds": 4}, run={"name": "full"}))
    short = simulate(digits_cfg(federation={"rounds": 2}, run={"name": "short"}))
    longer = simulate(resume=short.run_dir, rounds=4)
    assert [r["round"] for r in longer.history] == [1, 2, 3, 4]
    for k in full.state:
        np.testing.assert_array_equal(full.state[k], longer.state[k])
    with pytest.raises(ConfigError, match="cannot change: train.lr"):
        resume_config(short.run_dir, {"lr": 0.5})


def test_resume_refuses_more_rounds_under_a_calibrated_dp_budget(tmp_path):
    from pollen.compose import resume_config
    from pollen.config import make_config, to_toml
    from pollen.errors import ConfigError

    cfg = make_config({"privacy": {"client_dp": "central", "target_epsilon": 4.0, "delta": 1e-5}})
    (tmp_path / "config.toml").write_text(to_toml(cfg.to_dict()))
    with pytest.raises(ConfigError, match="calibrated"):
        resume_config(tmp_path, {"rounds": 60})


def test_ctrl_c_names_the_real_run_folder(digits_cfg, capsys):
    from pollen import RoundCompleted, RunInterrupted
    from pollen.cli import main
    from pollen.simulation import simulate

    def stop(event):
        if isinstance(event, RoundCompleted):
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        simulate(digits_cfg(federation={"rounds": 3}, run={"name": "stopped"}), callbacks=[stop])
    assert info.value.run_dir.name == "stopped" and (info.value.run_dir / "checkpoints").is_dir()


def test_a_sink_that_fails_does_not_stop_the_run_but_ctrl_c_does(digits_cfg):
    """Callbacks are sinks: an exception in one is logged and ignored (KeyboardInterrupt is not an Exception)."""
    from pollen.simulation import simulate

    def broken(event):
        raise ValueError("a bug in the user's callback")

    res = simulate(digits_cfg(federation={"rounds": 2}, run={"name": "sink"}), callbacks=[broken])
    assert len(res.history) == 2


def test_no_round_aggregating_is_a_failed_run(tmp_path):
    from types import SimpleNamespace

    import torch

    from pollen.errors import RunError
    from pollen.simulation import simulate

    def diverge(model, data, config, ctx):
        return {"loss": float("nan")}

    app = SimpleNamespace(model=lambda: torch.nn.Linear(2, 2), load_data=lambda ctx: (torch.zeros(4, 2), torch.zeros(4).long()),
                          train=diverge)
    with pytest.raises(RunError, match="no round aggregated"):
        simulate(app=app, parties=2, rounds=2, runs_dir=str(tmp_path), name="nan", progress=False)
    assert (tmp_path / "nan" / "history.jsonl").exists() and (tmp_path / "nan" / "report.md").exists()
