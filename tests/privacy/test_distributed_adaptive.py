"""Adaptive clipping under secure aggregation (Andrew et al. 2019, Section 3): the clip bit rides,
scaled, inside each party's masked vector with the Skellam noise; the coordinator only ever sees
the noised sum. The clip norm moves the right way, the count's noise is in the accountant, and the
recipe turns it on by default for ``--client-dp distributed --secagg``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollen.config import make_config
from pollen.privacy.client_dp import ClipStep, corrected_noise_multiplier
from pollen.privacy.distributed import BIT_KEY, SkellamNoise, bit_embedding
from pollen.privacy.skellam import SkellamAccountant, SkellamRound, skellam_epsilon
from pollen.transforms.base import StepContext
from pollen.types import RoundConfig, Update


def test_bit_embedding_is_andrews_correction():
    for z, sigma_b in ((1.0, 5.0), (1.3, 50.0), (3.0, 2.0)):
        e = bit_embedding(z, sigma_b)
        assert e.z_update == pytest.approx(corrected_noise_multiplier(z, sigma_b))
        assert z * e.norm == pytest.approx(e.z_update, rel=1e-12)  # one release of multiplier z over clip C'
        assert e.z_update / e.bit_scale == pytest.approx(sigma_b)  # the count's noise is σ_b


def _steps(z=1.0, sigma_b=2.0, clip_norm=0.5, k=10):
    clip = ClipStep(clip_norm, adaptive=True, target_quantile=0.5, clip_lr=0.2, count_stddev=sigma_b)
    return clip, SkellamNoise(clip, z, 0.1, k, 1e-5)


def test_party_sends_normalised_update_and_bit_only_inside_the_vector():
    clip, noise = _steps()
    cfg = clip.configure(RoundConfig(round=1))
    ctx = StepContext("0", 1, np.random.default_rng(0), {}, {}, cfg.extra)
    up = noise.encode(clip.encode(Update({"w": np.full(4, 0.1, np.float32)}, 7), ctx), ctx)
    assert "clip_bit" not in up.metrics  # metrics travel in the clear under SecAgg+
    np.testing.assert_allclose(up.delta["w"], 0.1 / 0.5)  # units of the round's clip norm
    s = noise.embedding.bit_scale
    assert up.delta[BIT_KEY][0] == pytest.approx(s * 0.5)  # norm 0.2 ≤ 0.5: not clipped, b = 1
    norm = math.sqrt(float(np.sum(up.delta["w"].astype(np.float64) ** 2)) + float(up.delta[BIT_KEY][0]) ** 2)
    assert norm <= noise.embedding.norm  # within the accounted L2 bound C'


def test_server_unpacks_the_noised_count_and_rescales():
    clip, noise = _steps()
    clip.configure(RoundConfig(round=1))
    s, m = noise.embedding.bit_scale, 8
    mean = Update({"w": np.full(3, 0.4), BIT_KEY: np.array([s * (6 - 0.5 * m) / m])}, m)  # 6 of 8 unclipped
    out = noise.unpack(mean, m)
    assert BIT_KEY not in out.delta
    np.testing.assert_allclose(out.delta["w"], 0.4 * 0.5)
    clip.after_aggregate(out.delta, 1, m)
    # 6/8 unclipped > the 0.5 quantile: the norm shrinks by exp(−0.2·(0.75 − 0.5)), no second noise
    assert clip.current == pytest.approx(0.5 * math.exp(-0.2 * 0.25))


def test_accounting_charges_the_bit_inside_the_release():
    clip, noise = _steps(z=1.2, sigma_b=3.0, k=10)
    noise.account(scale=1e6, parties=10, dim=1001)
    e = noise.embedding
    acc = SkellamAccountant()
    acc.step(SkellamRound(0.1, e.norm, 1e6, 1001, (1e6 * 1.2 * e.norm) ** 2))
    assert noise.accountant.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert e.norm > 1.0  # the count costs: ε above a release of the update alone at the same z_Δ
    alone = skellam_epsilon(e.z_update, 0.1, 1, 1e-5, 1.0, 1e6, 1001)
    assert noise.accountant.get_epsilon(1e-5) > alone


def _run(digits_cfg, clip_norm, rounds=4, **privacy):
    from pollen.simulation import simulate

    cfg = digits_cfg(data={"dataset": "digits", "parties": 20, "holdout": 0.0}, model={"model": "logreg"},
                     federation={"rounds": rounds, "parties_per_round": 10}, run={"name": f"c{clip_norm:g}"},
                     privacy={"client_dp": "distributed", "secagg": True, "adaptive_clip": True, "clip_lr": 0.5,
                              "client_noise_multiplier": 1.0, "clip_count_stddev": 1.0, "delta": 1e-5,
                              "clip_norm": clip_norm, **privacy})
    return simulate(cfg)


def test_secure_adaptive_clip_moves_the_right_way_and_nothing_leaves_in_clear(digits_cfg, monkeypatch):
    seen_decoded, seen_unpacked = [], []
    decode, unpack = ClipStep.decode, SkellamNoise.unpack

    def spy_decode(self, update):
        seen_decoded.append(update)
        return decode(self, update)

    def spy_unpack(self, update, parties):
        seen_unpacked.append(parties)
        return unpack(self, update, parties)

    monkeypatch.setattr(ClipStep, "decode", spy_decode)
    monkeypatch.setattr(SkellamNoise, "unpack", spy_unpack)
    up = _run(digits_cfg, clip_norm=1e-3).history
    norms = [h["clip_norm"] for h in up]
    assert norms[0] == pytest.approx(1e-3) and norms[-1] > 1.5e-3  # every update clipped: the norm grows
    down = _run(digits_cfg, clip_norm=1e3).history
    assert down[-1]["clip_norm"] < 0.7e3  # none clipped: it shrinks
    # The coordinator decoded only key advertisements: no model tensor, no bit, in the clear.
    from pollen.privacy.secagg import constants as C

    assert seen_decoded and all(set(u.delta) <= {C.ENC_PK, C.MASK_PK, C.IDENTITY, C.KEYS_SIG} for u in seen_decoded)
    assert all("clip_bit" not in u.metrics for u in seen_decoded)
    assert seen_unpacked and min(seen_unpacked) >= 2  # the count arrived only as a sum of several parties
    assert all("clip_bit" not in h for h in up + down)
    assert all(0 < h["epsilon"] for h in up) and up[-1]["epsilon"] > up[0]["epsilon"]


def test_calibrated_secure_adaptive_run_meets_its_target():
    from pollen.privacy.plan import client_noise_multiplier, count_stddev, sampling_plan

    cfg = make_config({"data": {"dataset": "fmnist", "parties": 1000}, "federation": {"rounds": 30, "parties_per_round": 1000},
                       "privacy": {"client_dp": "distributed", "secagg": True, "adaptive_clip": True,
                                   "target_epsilon": 8.0, "delta": 1e-5}})
    plan = sampling_plan(cfg)
    z = client_noise_multiplier(cfg, plan)
    e = bit_embedding(z, count_stddev(cfg, plan))
    from pollen.privacy.skellam import field_scale

    scale = field_scale(32, max(1.0, e.bit_scale / 2), 1000, e.z_update)
    eps = skellam_epsilon(z, 1.0, 30, 1e-5, e.norm, scale, 10**8)
    assert 7.9 <= eps <= 8.0


def test_recipe_turns_secure_adaptive_clipping_on_by_default():
    from pollen.cli import build_parser, config_from_args
    from pollen.compose import assemble
    from pollen.privacy.checks import check_config

    args = build_parser("simulate").parse_args(["simulate", "--dataset", "fmnist", "--parties", "1000", "--client-dp",
                                                "distributed", "--secagg", "--target-epsilon", "8", "--delta", "1e-5"])
    cfg = assemble(config_from_args(args)).cfg
    assert cfg.privacy.adaptive_clip and cfg.model.model == "scatter_linear"
    check_config(cfg)
