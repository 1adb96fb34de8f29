"""SecAgg+ over the real gRPC transport (127.0.0.1, parties as threads of this process): the
protocol uses nothing but submit/poll, Task/Reply arrays and JSON metadata, so the stages, the
dropout recovery and the result are the same as in simulation."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.simulation.run import simulate
from pollen.telemetry.history import party_metric

IDS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", len(IDS), 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _cfg(tmp_path, **privacy):
    return make_config({"data": {"dataset": "digits", "parties": len(IDS), "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1}, "federation": {"rounds": 2}, "privacy": privacy,
                        "run": {"seed": 0, "progress": False, "runs_dir": str(tmp_path), "name": "plain"}})


def test_secagg_over_grpc_matches_plain_fedavg(shards, tmp_path, run_over_grpc):
    plain = simulate(_cfg(tmp_path))
    state, records = run_over_grpc(_cfg(tmp_path, secagg=True), *shards, IDS)
    assert [r["secagg_parties"] for r in records] == [4.0, 4.0]
    diff = max(float(np.max(np.abs(state[k] - plain.state[k]))) for k in plain.state)
    # quantisation steps are ~1e-6; the rest is the same training. The message tells a wrong sum
    # (same train losses) from different training (different losses) if this ever fails again.
    seen = {"plain": [(r["round"], party_metric(r, "train_loss"), r.get("num_examples")) for r in plain.history],
            "grpc": [(r["round"], party_metric(r, "train_loss"), r.get("num_examples"), r.get("parties")) for r in records]}
    assert diff < 1e-4, seen
    assert records[-1]["bytes_up"] > 4 * sum(v.nbytes for v in state.values())  # masked vectors counted


def test_secagg_over_grpc_recovers_from_a_dropout_after_masking(shards, tmp_path, run_over_grpc):
    _, records = run_over_grpc(_cfg(tmp_path, secagg=True, secagg_dropout=0.25), *shards, IDS)
    assert all(r["secagg_dropped"] == 1 and r["secagg_parties"] == 3 and r["aggregated"] for r in records)
    assert party_metric(records[-1], "train_loss") < party_metric(records[0], "train_loss")
