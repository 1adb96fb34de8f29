"""Attack formulas (poison.py) and who is malicious."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from pollen.attacks import poison
from pollen.errors import ConfigError


def _delta(rng, scale=1.0):
    return {"w": (rng.normal(size=(3, 4)) * scale).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
            "count": np.array(5, dtype=np.int64)}


def test_select_malicious_is_seeded_and_sized():
    ids = [str(i) for i in range(100)]
    a = poison.select_malicious(ids, 0.2, seed=0)
    assert len(a) == 20 and a == poison.select_malicious(list(reversed(ids)), 0.2, seed=0)
    assert a != poison.select_malicious(ids, 0.2, seed=1)
    with pytest.raises(ConfigError, match="rounds to 0"):
        poison.select_malicious(ids[:3], 0.1, seed=0)


@pytest.mark.parametrize(("n", "f", "golden"), [(100, 20, 0.495850), (50, 12, 0.582842), (10, 2, 0.253347)])
def test_alie_z_max_follows_the_paper(n, f, golden):
    # s = floor(n/2 + 1) - f; z = Phi^-1((n - s)/n): 100,20 → Phi^-1(0.69); 50,12 → Phi^-1(0.72); 10,2 → Phi^-1(0.6)
    assert poison.alie_z_max(n, f) == pytest.approx(golden, abs=1e-5)
    s = (n // 2 + 1) - f
    assert NormalDist().cdf(poison.alie_z_max(n, f)) == pytest.approx((n - s) / n)


def test_alie_update_equals_the_formula():
    rng = np.random.default_rng(0)
    benign = [_delta(rng) for _ in range(4)]
    z = poison.alie_z_max(10, 4)
    out = poison.alie(benign[0], benign, z)
    for k in ("w", "b"):
        stack = np.stack([b[k].astype(np.float64) for b in benign])
        np.testing.assert_allclose(out[k], stack.mean(0) - z * stack.std(0), rtol=1e-6)
        assert out[k].dtype == np.float32
    assert out["count"] == 5  # integer buffers keep the attacker's own


def test_ipm_signflip_scaling_gaussian():
    rng = np.random.default_rng(1)
    benign = [_delta(rng) for _ in range(3)]
    own = benign[0]
    np.testing.assert_allclose(poison.ipm(own, benign, 0.5)["w"], -0.5 * np.mean([b["w"] for b in benign], 0), rtol=1e-6)
    np.testing.assert_array_equal(poison.signflip(own, 3.0)["b"], -3.0 * own["b"])
    np.testing.assert_array_equal(poison.scale_update(own, 10.0)["w"], 10.0 * own["w"])
    big = {"w": np.zeros((200, 100), dtype=np.float32), "count": np.array(2)}
    g = poison.gaussian(big, 0.3, np.random.default_rng(2))
    assert g["w"].shape == (200, 100) and g["w"].dtype == np.float32 and g["count"] == 2
    assert abs(float(g["w"].mean())) < 0.01 and float(g["w"].std()) == pytest.approx(0.3, rel=0.02)
    np.testing.assert_array_equal(own["w"], benign[0]["w"])  # inputs untouched


def test_flip_labels_is_a_permutation():
    y = np.arange(10)
    assert list(poison.flip_labels(y, 10)) == list(range(9, -1, -1))


def test_attack_with_dp_sgd_is_refused(digits_cfg):
    from pollen.attacks import spec_from_config

    cfg = digits_cfg(attack={"malicious_fraction": 0.25, "attack": "signflip"})
    assert spec_from_config(cfg, 10).kind == "signflip"
    dp = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"dp_sgd": True})})
    with pytest.raises(ConfigError, match="dp_sgd"):
        spec_from_config(dp, 10)
