"""Experiment tracking sinks, read back: a local MLflow file store (params, per-round metrics at
step = round, ε, bytes, the final model as an artifact) and TensorBoard event files (scalars per
round)."""

from __future__ import annotations

import pytest

from pollen.errors import ConfigError
from pollen.telemetry.tracking import tracking_sinks

from ui_helpers import need


def _run(tmp_path, track, rounds=3, **extra):
    from pollen.simulation import simulate

    sinks = tracking_sinks(track)
    try:
        result = simulate(dataset="digits", parties=3, rounds=rounds, name="tracked", runs_dir=str(tmp_path / "runs"),
                          progress=False, callbacks=sinks, **extra)
    finally:
        for s in sinks:
            s.close()
    return result


def test_mlflow_local_store(tmp_path, monkeypatch):
    need("mlflow", "mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    result = _run(tmp_path, [f"mlflow:{store}"], client_dp="central", clip_norm=1.0, client_noise_multiplier=0.5,
                  delta=1e-5)
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("pollen")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["data.dataset"] == "digits" and run.data.params["federation.rounds"] == "3"
    acc = client.get_metric_history(run.info.run_id, "accuracy")
    history = result.history
    assert [m.step for m in acc] == [1, 2, 3]
    assert [m.value for m in acc] == pytest.approx([r["accuracy"] for r in history])
    for key in ("loss", "bytes_up", "bytes_down", "seconds", "epsilon"):
        values = client.get_metric_history(run.info.run_id, key)
        assert [m.value for m in values] == pytest.approx([r[key] for r in history]), key
    eps = [m.value for m in client.get_metric_history(run.info.run_id, "epsilon")]
    assert eps == sorted(eps) and eps[0] > 0  # ε grows round by round
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "report.md", "history.jsonl", "config.toml"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path / "dl"))
    assert open(local, "rb").read() == (result.run_dir / "model.safetensors").read_bytes()


def test_tensorboard_event_files(tmp_path):
    need("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path, ["tensorboard"])
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"accuracy", "loss", "bytes_up", "bytes_down", "seconds"} <= tags
    points = acc.Scalars("accuracy")
    assert [p.step for p in points] == [1, 2, 3]
    assert [p.value for p in points] == pytest.approx([r["accuracy"] for r in result.history], rel=1e-6)
    assert "config" in " ".join(acc.Tags()["tensors"])  # the config as text

    other = _run(tmp_path / "x", ["tensorboard:" + str(tmp_path / "tb")], rounds=1)
    assert list((tmp_path / "tb" / other.run_dir.name).glob("events.out.tfevents.*"))


def test_unknown_tracker_is_one_clear_line():
    with pytest.raises(ConfigError, match="expected one of mlflow, tensorboard"):
        tracking_sinks(["wandb"])


def test_a_failing_tracker_never_stops_the_run(tmp_path):
    from pollen.simulation import simulate
    from pollen.telemetry.tracking import BackgroundSink

    def broken(event):
        raise RuntimeError("store unreachable")

    sink = BackgroundSink(broken)
    result = simulate(dataset="digits", parties=2, rounds=2, name="r", runs_dir=str(tmp_path), progress=False,
                      callbacks=[sink])
    sink.close()
    assert len(result.history) == 2
