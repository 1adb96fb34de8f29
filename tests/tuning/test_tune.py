"""Federated tuning: finds a better learning rate than a bad default on digits, resumes an
interrupted study, writes a runnable best config."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna", reason="the tune extra (optuna) is not installed")

from pollen.config import load_toml, make_config  # noqa: E402
from pollen.errors import ConfigError  # noqa: E402
from pollen.telemetry.events import RoundCompleted  # noqa: E402
from pollen.tuning import load_space, tune  # noqa: E402

BAD_LR = 1e-4
SPACE = {"lr": {"low": 1e-4, "high": 1.0, "log": True}}


def base(tmp_path, rounds=4):
    return {"data": {"dataset": "digits", "parties": 4}, "model": {"model": "mlp"}, "train": {"lr": BAD_LR},
            "federation": {"rounds": rounds}, "run": {"runs_dir": str(tmp_path / "runs"), "device": "cpu", "seed": 0,
                                                       "progress": False}}


def test_finds_a_better_lr_than_a_bad_default(tmp_path):
    from pollen.simulation import simulate

    default = simulate(base(tmp_path), name="default").history[-1]["accuracy"]
    result = tune(base(tmp_path), space=SPACE, trials=6, out_dir=tmp_path / "tune", pruner="none")
    assert result.best_value >= default + 0.3, (default, result.best_value, result.best_params)
    assert result.best_params["lr"] > 10 * BAD_LR
    out = result.out_dir
    assert {"study.db", "results.md", "trials.csv", "best.toml", "summary.json"} <= {p.name for p in out.iterdir()}
    best = make_config(load_toml(out / "best.toml"))  # runnable: a valid RunConfig with the best lr
    assert best.train.lr == pytest.approx(result.best_params["lr"])
    assert best.data.dataset == "digits" and best.federation.rounds == 4
    assert "**(best)**" in (out / "results.md").read_text()


def test_pruner_stops_trials_on_the_per_round_metric(tmp_path):
    result = tune(base(tmp_path, rounds=6), space=SPACE, trials=8, out_dir=tmp_path / "tune", pruner="halving",
                  min_rounds=1)
    states = [t.state for t in result.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert all(t.rounds < 6 for t in pruned)  # a pruned trial's run stopped early, its history kept


def test_resumes_after_an_interruption(tmp_path):
    ran = []

    class CtrlC:  # Ctrl-C in the middle of the third trial
        def __init__(self):
            self.trial = 0

        def __call__(self, event):
            if isinstance(event, RoundCompleted) and event.round == 2 and len(ran) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(base(tmp_path), space=SPACE, trials=4, out_dir=tmp_path / "tune", pruner="none", callbacks=[CtrlC()],
             on_trial=ran.append)
    assert len(ran) == 2
    study = optuna.load_study(study_name="pollen", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    cut = study.trials[2]
    assert cut.state == optuna.trial.TrialState.FAIL and cut.user_attrs["interrupted"]
    again = []
    result = tune(base(tmp_path), space=SPACE, trials=4, out_dir=tmp_path / "tune", pruner="none", on_trial=again.append)
    assert len(again) == 2  # only the missing trials ran: the finished ones were kept
    assert again[0].params == cut.params  # the cut-off trial ran again with its parameters
    assert [t.number for t in ran] == [0, 1]
    assert sum(t.state == "COMPLETE" for t in result.trials) == 4


def test_a_killed_process_leaves_a_running_trial_that_is_run_again(tmp_path):
    tune(base(tmp_path, rounds=2), space=SPACE, trials=1, out_dir=tmp_path / "tune", pruner="none")
    study = optuna.load_study(study_name="pollen", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})  # as if killed mid-trial
    lr = orphan.params["lr"]
    again = []
    tune(base(tmp_path, rounds=2), space=SPACE, trials=2, out_dir=tmp_path / "tune", pruner="none", on_trial=again.append)
    assert len(again) == 1 and again[0].params["lr"] == pytest.approx(lr)


def test_space_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="did you mean lr"):
        load_space({"lrr": {"low": 0.1, "high": 1.0}})
    with pytest.raises(ConfigError, match="low < high"):
        load_space({"lr": {"low": 1.0, "high": 0.1}})
    with pytest.raises(ConfigError, match="log scale needs low > 0"):
        load_space({"lr": {"low": 0.0, "high": 0.1, "log": True}})
    (tmp_path / "space.toml").write_text('lr = { low = 0.001, high = 1.0, log = true }\nepochs = { low = 1, high = 3 }\n'
                                         '[strategy]\nserver_lr = { low = 0.01, high = 1.0 }\n')
    params = {p.name: p for p in load_space(tmp_path / "space.toml")}
    assert params["strategy.server_lr"].low == 0.01 and params["epochs"].integer and params["lr"].log
