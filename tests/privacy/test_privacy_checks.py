"""Configurations that cannot work are refused before the run starts, with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.config import make_config
from pollen.errors import ConfigError
from pollen.compose import assemble
from pollen.privacy.checks import check_config, problems
from pollen.transforms.base import Pipeline, UpdateStep, check_pipeline


def _cfg(privacy=None, strategy="fedavg", compression=None, parties=10, per_round=None):
    return make_config({
        "data": {"dataset": "digits", "parties": parties},
        "federation": {"rounds": 5, "parties_per_round": per_round},
        "strategy": {"name": strategy},
        "privacy": privacy or {},
        "compression": compression or {},
    })


@pytest.mark.parametrize("privacy,reason", [
    ({"dp_sgd": True, "noise_multiplier": 1.1}, "--dp-sgd needs a δ"),
    ({"client_dp": "central", "client_noise_multiplier": 1.0}, "--client-dp central needs a δ"),
    ({"dp_sgd": True, "delta": 1e-5}, "needs --noise-multiplier"),
    ({"client_dp": "local", "delta": 1e-5}, "--client-noise-multiplier or --target-epsilon"),
    ({"target_epsilon": 8.0, "delta": 1e-5}, "--target-epsilon does nothing"),
    ({"client_dp": "central", "client_noise_multiplier": 1.0, "delta": 1e-5, "accountant": "prv"}, "use --accountant rdp"),
    ({"client_dp": "local", "client_noise_multiplier": 1.0, "delta": 1e-5, "adaptive_clip": True}, "--adaptive-clip needs"),
    ({"adaptive_clip": True}, "also set --client-dp central"),
    # Andrew et al.'s correction is impossible with 10 parties: σ_b = 0.5 and z = 2 ≥ 2σ_b
    ({"client_dp": "central", "client_noise_multiplier": 2.0, "delta": 1e-5, "adaptive_clip": True}, "clip-count-stddev"),
    ({"client_dp": "central", "target_epsilon": 1e-6, "delta": 1e-5}, "cannot be met"),
])
def test_refused_privacy_settings(privacy, reason):
    with pytest.raises(ConfigError, match="cannot work") as err:
        check_config(_cfg(privacy))
    assert reason in str(err.value)


def test_all_problems_listed_at_once():
    found = problems(_cfg({"dp_sgd": True}))
    assert len(found) == 2 and "δ" in found[0] and "--noise-multiplier" in found[1]


@pytest.fixture
def he_keys(monkeypatch):
    """--he-keys that need not exist: the combination is refused before any key is used."""
    import pollen.privacy.he as he

    monkeypatch.setattr(he, "read_info", lambda keys_dir: {})


def test_median_over_noised_or_encrypted_updates_refused(he_keys):
    with pytest.raises(ConfigError, match="'median' is not a mean"):
        check_config(_cfg({"client_dp": "central", "client_noise_multiplier": 1.0, "delta": 1e-5}, strategy="median"))
    with pytest.raises(ConfigError, match="reveals only their sum"):  # the one pipeline check, run by assemble
        assemble(_cfg({"he": True, "he_keys": "k"}, strategy="median"))


def test_topk_with_masking_refused(he_keys):
    with pytest.raises(ConfigError, match="cannot be decoded from a sum"):
        assemble(_cfg({"he": True, "he_keys": "k"}, compression={"codec": "topk"}))


def test_dp_sgd_with_fedprox_refused():
    with pytest.raises(ConfigError, match="proximal term"):
        check_config(_cfg({"dp_sgd": True, "noise_multiplier": 1.0, "delta": 1e-5}, strategy="fedprox"))


def test_working_combinations_pass():
    check_config(_cfg())
    check_config(_cfg({"dp_sgd": True, "target_epsilon": 8.0, "delta": 1e-5}))
    check_config(_cfg({"client_dp": "central", "target_epsilon": 8.0, "delta": 1e-5, "adaptive_clip": True},
                      parties=200, per_round=100))
    check_config(_cfg({"client_dp": "distributed", "target_epsilon": 4.0, "delta": 1e-5, "secagg": True}))


class _Mask(UpdateStep):
    name, stage, linear = "mask", "mask", True


class _TopK(UpdateStep):
    name, stage, linear = "topk", "compress", False


def test_pipeline_check_refuses_unsummable_codec_under_masks():
    mean = type("Mean", (), {"name": "mean", "linear": True})()
    with pytest.raises(ConfigError, match="cannot be decoded from a sum"):
        check_pipeline(Pipeline((_TopK(), _Mask())), mean)
    check_pipeline(Pipeline((_TopK(),)), mean)


def test_cli_prints_reason_and_exits_2(capsys, tmp_path):
    from pollen.cli import main

    code = main(["simulate", "--dataset", "digits", "--dp-sgd", "--noise-multiplier", "1.1",
                 "--runs-dir", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs a δ" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_sampling_plan_replays_the_sampler():
    from collections import Counter

    from pollen.privacy.plan import dp_sgd_extra, sampling_plan
    from pollen.strategy.base import Sampler

    cfg = _cfg({"dp_sgd": True, "target_epsilon": 8.0, "delta": 1e-5}, parties=20, per_round=3)
    plan = sampling_plan(cfg)
    sampler = Sampler(count=3, seed=0)
    counts = Counter(p for r in range(1, 6) for p in sampler.select(r, [str(i) for i in range(20)]))
    assert (plan.parties, plan.per_round, plan.rounds) == (20, 3, 5)
    assert plan.max_participations == max(counts.values())
    extra = dp_sgd_extra(cfg)["dp_sgd"]
    assert extra["participations"] == plan.max_participations and extra["target_epsilon"] == 8.0
    assert dp_sgd_extra(_cfg()) == {}
