import json
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from pollen.simulation import centralized, simulate


def test_simulation_learns_and_writes_its_run(digits_cfg):
    cfg = digits_cfg(federation={"rounds": 8}, train={"lr": 0.1})
    res = simulate(cfg)
    d = res.run_dir
    for f in ("config.toml", "history.jsonl", "model.safetensors", "report.md", "plot.svg", "summary.json",
              "checkpoints/round-000008/model.safetensors", "checkpoints/round-000007/MANIFEST.json"):
        assert (d / f).exists(), f
    h = res.history
    assert [r["round"] for r in h] == list(range(1, 9))
    assert h[-1]["accuracy"] > 0.8 and h[-1]["accuracy"] > h[0]["accuracy"]
    assert h[-1]["fed_accuracy"] is not None and h[-1]["bytes_up"] > 0 and h[-1]["parties"] == ["0", "1", "2", "3"]
    saved = load_file(str(d / "model.safetensors"))
    assert set(saved) == set(res.state)
    assert "| round |" in (d / "report.md").read_text()


def test_resume_gives_the_same_model_as_an_uninterrupted_run(digits_cfg, tmp_path):
    full = simulate(digits_cfg(federation={"rounds": 4}, run={"name": "full"}))
    part = simulate(digits_cfg(federation={"rounds": 2}, run={"name": "part"}))
    # "crash" after round 2: continue the same run directory to round 4
    cfg4 = digits_cfg(federation={"rounds": 4}, run={"name": "part"})
    (part.run_dir / "config.toml").write_text((full.run_dir / "config.toml").read_text().replace('name = "full"', 'name = "part"'))
    resumed = simulate(cfg4, resume=part.run_dir)
    for k in full.state:
        np.testing.assert_array_equal(full.state[k], resumed.state[k])
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]


def test_history_never_runs_ahead_of_the_checkpoint_and_resume_restores_a_lost_line(digits_cfg):
    from pollen.server.checkpoint import Checkpointer
    from pollen.compose import assemble, build_strategy, base_round_config
    from pollen.server import Coordinator
    from pollen.telemetry import RoundCompleted
    from pollen.transport.inprocess import InProcessTransport

    cfg = digits_cfg(federation={"rounds": 2}, run={"name": "order"})
    fed = assemble(cfg)
    ckpt = Checkpointer(cfg.run.runs_dir + "/order")
    seen = []  # the checkpoint's round at the moment each RoundCompleted is published
    coord = Coordinator(build_strategy(cfg), InProcessTransport(fed.parties(fed.trainer())), 2, checkpointer=ckpt)
    coord.events.subscribe(lambda e: seen.append((e.round, ckpt.load()[0])) if isinstance(e, RoundCompleted) else None)
    coord.run(fed.initial_state())
    assert seen == [(1, 1), (2, 2)]

    # killed after round 2's checkpoint but before its history line: resume restores the line
    part = simulate(digits_cfg(federation={"rounds": 2}, run={"name": "lost"}))
    lines = (part.run_dir / "history.jsonl").read_text().splitlines()
    (part.run_dir / "history.jsonl").write_text(lines[0] + "\n")
    resumed = simulate(digits_cfg(federation={"rounds": 3}, run={"name": "lost"}), resume=part.run_dir)
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[1]["accuracy"] == json.loads(lines[1])["accuracy"]


def test_process_backend_equals_inline(digits_cfg):
    inline = simulate(digits_cfg(run={"name": "inline"}))
    pooled = simulate(digits_cfg(run={"name": "pool"}, simulation={"backend": "process", "workers": 2, "threads": 1}))
    for k in inline.state:
        np.testing.assert_allclose(inline.state[k], pooled.state[k], rtol=1e-4, atol=1e-5)


def test_simulate_trains_with_its_threads_and_puts_back_the_callers(digits_cfg, monkeypatch):
    import torch

    from pollen.client.trainer import Trainer

    seen, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: (seen.append(torch.get_num_threads()), fit(self, *a, **k))[1])
    torch.set_num_threads(1)
    simulate(digits_cfg(federation={"rounds": 1}, simulation={"threads": 2}))
    centralized(digits_cfg(federation={"rounds": 1}, simulation={"threads": 2}, run={"name": "c"}))
    assert seen and set(seen) == {2}  # the run used the configured threads ...
    assert torch.get_num_threads() == 1  # ... and left the caller's setting as it was


def test_centralized_baseline_same_budget(digits_cfg):
    res = centralized(digits_cfg(federation={"rounds": 3, "fraction": 0.5}))
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1.5 and summary["method"] == "centralized"
    assert res.history[-1]["accuracy"] > 0.5


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pollen.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_end_to_end(tmp_path):
    r = _cli("simulate", "--dataset", "digits", "--parties", "3", "--rounds", "2", "--name", "a", "--no-progress", "--with-centralized", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| a | fedavg |" in r.stdout and "centralized" in r.stdout
    r = _cli("report", "runs/a", cwd=tmp_path)
    assert r.returncode == 0 and "| a | fedavg | digits | accuracy |" in r.stdout
    r = _cli("compare", "runs/a", "runs/a-centralized", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("\n| a") == 2
    assert "Against training on pooled data" in (tmp_path / "runs/a/report.md").read_text()


def test_cli_partition_writes_shards(tmp_path):
    r = _cli("partition", "--dataset", "digits", "--parties", "4", "--scheme", "dirichlet", "--alpha", "0.5", "--out", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert all((tmp_path / f"data/party{i}/data.safetensors").exists() for i in range(4))
    assert "party" in r.stdout


def test_cli_user_errors_have_no_traceback(tmp_path):
    cases = [
        ("simulate", "--rounds", "0"),
        ("simulate", "--dataset", "mnist", "--data-dir", str(tmp_path / "nope")),
        ("simulate", "--config", str(tmp_path / "missing.toml")),
        ("simulate", "--dataset", "digits", "--model", "resnet"),
        ("report", str(tmp_path)),
        ("simulate", "--dataset", "digits", "--strategy", "fedmagic"),
    ]
    for args in cases:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and "error:" in r.stderr, (args, r.stderr)


def test_the_run_plot_is_an_svg_with_one_point_per_evaluated_round(tmp_path):
    import xml.etree.ElementTree as ET

    from pollen.telemetry.report import plot_history

    history = [{"round": r, "accuracy": 0.5 + r / 100, "loss": 1.0 / r, "fed_accuracy": None if r % 2 else 0.6}
               for r in range(1, 8)]
    root = ET.parse(plot_history(history, tmp_path / "plot.svg", title="run <1>")).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = [pl.get("points").split() for pl in root.iter(f"{ns}polyline")]
    assert [len(pts) for pts in lines] == [7, 3, 7]  # accuracy, fed_accuracy (rounds 2, 4, 6), loss
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "run <1>" in texts and "accuracy (%)" in texts and "loss" in texts
    acc_y = [float(p.split(",")[1]) for p in lines[0]]
    assert acc_y == sorted(acc_y, reverse=True)  # rising accuracy goes up the page (SVG y grows downwards)
