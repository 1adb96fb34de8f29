"""FedBuff and SCAFFOLD over the real gRPC transport (127.0.0.1, no TLS here; TLS is the
transport tests' business): the asynchronous loop and SCAFFOLD's extra tensors need nothing from
a transport beyond submit/poll and reply names that match the task."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards

IDS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", 3, 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _cfg(rounds, **strategy):
    return make_config({"data": {"dataset": "digits", "parties": 3, "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1}, "federation": {"rounds": rounds}, "strategy": strategy, "run": {"seed": 0}})


def test_fedbuff_over_grpc(shards, run_over_grpc):
    state, recs = run_over_grpc(_cfg(3, name="fedbuff", async_buffer=2), *shards, IDS, heartbeat=10.0, round_timeout=60.0)
    assert len(recs) == 3 and all(r["aggregated"] and len(r["parties"]) == 2 for r in recs)
    assert max(r["staleness_max"] for r in recs) >= 1  # the third party's update arrives a step late
    assert all(np.isfinite(v).all() for v in state.values())


def test_scaffold_over_grpc(shards, run_over_grpc):
    _, recs = run_over_grpc(_cfg(2, name="scaffold"), *shards, IDS, heartbeat=10.0, round_timeout=60.0)
    assert all(r["aggregated"] and not r["parties_failed"] for r in recs), recs
