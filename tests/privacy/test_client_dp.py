"""Party-level DP: clipping, noise scale, adaptive clipping, accounting in a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pollen.errors import ConfigError
from pollen.privacy.accountant import epsilon_for
from pollen.privacy.client_dp import ClipStep, GaussianNoiseStep, clip_update, corrected_noise_multiplier, update_norm
from pollen.transforms.base import StepContext
from pollen.types import RoundConfig, Update


def _ctx(extra=None, state=None):
    return StepContext("0", 1, np.random.default_rng(0), state if state is not None else {}, {}, extra or {})


def test_clip_of_all_zero_update_is_zero_and_finite():
    delta = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    out, norm = clip_update(delta, 1.0)
    assert norm == 0.0
    assert all(np.array_equal(out[k], delta[k]) and np.isfinite(out[k]).all() for k in delta)
    step = ClipStep(1.0)
    assert update_norm(step.encode(Update(delta, 5), _ctx()).delta) == 0.0


def test_clip_bounds_norm_keeps_small_updates_and_is_pure():
    rng = np.random.default_rng(1)
    big = {"w": rng.normal(size=(50, 20)).astype(np.float32), "n": np.array(7, np.int64)}
    before = {k: v.copy() for k, v in big.items()}
    out, norm = clip_update(big, 2.0)
    assert norm > 2.0
    assert update_norm(out) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(out["w"] * norm / 2.0, big["w"], rtol=1e-5)
    assert out["n"] == 0  # integer buffers would leak counts: zeroed
    assert all(np.array_equal(big[k], before[k]) for k in big)  # input untouched
    small = {"w": big["w"] * (0.5 / norm)}
    np.testing.assert_array_equal(clip_update(small, 2.0)[0]["w"], small["w"])


def test_clip_step_gives_every_party_weight_one():
    up = ClipStep(1.0).encode(Update({"w": np.ones(3, np.float32)}, 1234, {"train_loss": 0.5}), _ctx())
    assert up.num_examples == 1 and up.metrics["train_loss"] == 0.5


def _central(mode, z=1.3, c=0.7, k=8):
    clip = ClipStep(c)
    return clip, GaussianNoiseStep(clip, mode, z, sample_rate=k / 100, per_round=k, delta=1e-5)


def test_central_noise_std_is_sigma_c_over_n():
    clip, noise = _central("central")
    clip.configure(RoundConfig())
    zero = Update({"w": np.zeros(100, np.float32)}, 1)
    for _ in range(8):
        clip.decode(zero)
    out = noise.after_aggregate({"w": np.zeros(400_000, np.float64)}, 1, 8)
    assert np.std(out["w"]) == pytest.approx(1.3 * 0.7 / 8, rel=0.01)
    assert abs(np.mean(out["w"])) < 5 * 1.3 * 0.7 / 8 / math.sqrt(400_000)


def test_local_and_distributed_noise_std():
    _, local = _central("local")
    out = local.encode(Update({"w": np.zeros(400_000, np.float64)}, 1), _ctx({"clip_norm": 0.7}))
    assert np.std(out.delta["w"]) == pytest.approx(1.3 * 0.7, rel=0.01)
    assert out.metrics["epsilon"] == pytest.approx(epsilon_for(1.3 / 2, 1.0, 1, 1e-5))
    _, dist = _central("distributed")
    out = dist.encode(Update({"w": np.zeros(400_000, np.float64)}, 1), _ctx({"clip_norm": 0.7}))
    assert np.std(out.delta["w"]) == pytest.approx(1.3 * 0.7 / math.sqrt(8), rel=0.01)


def test_noise_is_not_seeded_by_the_run():
    _, local = _central("local")
    a = local.encode(Update({"w": np.zeros(10)}, 1), _ctx({"clip_norm": 1.0})).delta["w"]
    b = local.encode(Update({"w": np.zeros(10)}, 1), _ctx({"clip_norm": 1.0})).delta["w"]
    assert not np.array_equal(a, b)  # same party, round and run seed: fresh CSPRNG noise


def test_central_accounting_per_round():
    clip, noise = _central("central", z=2.0, k=10)
    for r in range(1, 4):
        clip.configure(RoundConfig(round=r))
        noise.after_aggregate({"w": np.zeros(3)}, r, 10)
    expected = epsilon_for(1.0, 0.1, 3, 1e-5, sampling="without_replacement")
    assert noise.report(3)["epsilon"] == pytest.approx(expected)


@pytest.mark.parametrize("count_std", [0.0, 2.0])
def test_adaptive_clipping_moves_toward_target_quantile(count_std):
    rng = np.random.default_rng(0)
    clip = ClipStep(0.1, adaptive=True, target_quantile=0.5, clip_lr=0.2, count_stddev=count_std)
    for r in range(1, 121):
        cfg = clip.configure(RoundConfig(round=r))
        for _ in range(100):
            norm = rng.uniform(0, 10)  # median norm: 5
            up = clip.encode(Update({"w": np.array([norm], np.float32)}, 1), _ctx(cfg.extra))
            clip.decode(up)
        clip.after_aggregate({"w": np.zeros(1)}, r, 100)
    assert clip.current == pytest.approx(5.0, rel=0.25)
    assert clip.report(120)["clip_norm"] > 1.0


def test_noise_correction_of_andrew_et_al():
    z = 1.0
    zd = corrected_noise_multiplier(z, 5.0)
    assert zd > z
    assert (zd ** -2 + (2 * 5.0) ** -2) ** -0.5 == pytest.approx(z)  # both releases = one Gaussian of z
    with pytest.raises(ConfigError, match="clip-count-stddev"):
        corrected_noise_multiplier(1.0, 0.5)


def test_client_dp_run_reports_accountant_epsilon(digits_cfg):
    from pollen.simulation import simulate

    cfg = digits_cfg(data={"dataset": "digits", "parties": 6}, federation={"rounds": 2, "parties_per_round": 3},
                     privacy={"client_dp": "central", "client_noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5})
    result = simulate(cfg)
    lines = [json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()]
    expected = epsilon_for(0.5, 0.5, 2, 1e-5, sampling="without_replacement")
    assert lines[-1]["epsilon"] == pytest.approx(expected)
    assert lines[-1]["clip_norm"] == 0.5
    assert lines[0]["num_examples"] == 3  # uniform weights: one per party
