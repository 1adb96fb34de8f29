"""The accountants of distributed discrete noise (Skellam) and of DP-FTRL's tree aggregation,
against their papers' and reference implementations' values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollen.privacy.accountant import epsilon_for, smallest_noise
from pollen.privacy.ftrl import ftrl_epsilon
from pollen.privacy.rdp import (
    DEFAULT_ORDERS,
    INTEGER_ORDERS,
    rdp_to_epsilon,
    rdp_without_replacement,
    rdp_without_replacement_general,
)
from pollen.privacy.skellam import (
    SkellamAccountant,
    SkellamRound,
    add_integer_noise,
    integer_l1,
    rounded_l2,
    skellam_epsilon,
    skellam_noise,
    skellam_rdp,
)
from pollen.privacy.tree import TreeNoise, epochs, rdp_single_tree, rdp_tree_restart, tree_sensitivity_squared

TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


# ---------------------------------------------------------------- Skellam
def test_skellam_rdp_is_the_papers_formula():
    # Agarwal, Kairouz, Liu 2021 (Corollary 3.6), as google-research/federated's
    # distributed_dp/accounting_utils.py writes it with scale s and central variance μ (real units):
    #   α Δ₂²/(2μ) + min(((2α−1) s Δ₂² + 6Δ₁) / (4 s³ μ²), 3Δ₁ / (2 s μ)).
    # Ours is in integer units (Δ·s, V = s²μ); both must agree.
    a, l1, l2, s, mu = 7, 40.0, 1.0, 100.0, 0.8
    reference = a / (2 * mu) * l2**2 + min(((2 * a - 1) * s * l2**2 + 6 * l1) / (4 * s**3 * mu**2), 3 * l1 / (2 * s * mu))
    assert skellam_rdp(a, l1 * s, l2 * s, s * s * mu) == pytest.approx(reference, rel=1e-12)
    # hand-computed golden value (V = 64, Δ₂ = 8, Δ₁ = 64, α = 2):
    # 2·64/128 + min((3·64 + 384)/(4·4096), 192/128) = 1 + 576/16384
    assert skellam_rdp(2, 64.0, 8.0, 64.0) == pytest.approx(1 + 576 / 16384, rel=1e-12)


def test_skellam_tends_to_the_gaussian_and_never_below_it():
    # Same z: with a fine grid (large scale) the Skellam ε approaches the Gaussian one, from above.
    # The Skellam accountant uses integer orders, so the Gaussian is taken on the same orders.
    z, q, rounds, delta = 3.0, 1.0, 20, 1e-5
    orders = np.asarray(INTEGER_ORDERS, dtype=float)
    gauss = rdp_to_epsilon(INTEGER_ORDERS, orders * rounds / (2 * (z / 2) ** 2), delta)[0]  # replace-one: 2C
    assert gauss >= epsilon_for(z / 2, q, rounds, delta)  # the finer orders can only do better
    for scale in (1e3, 1e5, 1e7):
        sk = skellam_epsilon(z, q, rounds, delta, clip=1.0, scale=scale, dim=10_000)
        assert sk >= gauss * (1 - 1e-9)
    assert skellam_epsilon(z, q, rounds, delta, 1.0, 1e7, 10_000) == pytest.approx(gauss, rel=0.01)
    # a coarse grid pays for rounding (√d against γC)
    assert skellam_epsilon(z, q, rounds, delta, 1.0, 10.0, 10_000) > 2 * gauss


def test_rounding_and_l1_bounds():
    assert rounded_l2(100.0, 10_000) == 200.0  # ‖round(v)‖₂ ≤ ‖v‖₂ + √d
    assert integer_l1(3.0, 100) == 9.0  # integer vectors: ‖v‖₁ ≤ ‖v‖₂²
    assert integer_l1(50.0, 100) == 500.0  # … and ≤ √d ‖v‖₂


def test_general_subsampling_bound_reproduces_theorem_9_for_the_gaussian():
    # At orders where Pollen's Gaussian code uses Wang et al.'s Theorem 9 (above 64), the general
    # form on the Gaussian's RDP must give the same value; below, Theorem 27 is tighter.
    sigma = 2.0
    eps = lambda j: j / (2 * sigma**2)  # noqa: E731
    assert rdp_without_replacement_general(0.1, eps, 80) == pytest.approx(rdp_without_replacement(0.1, sigma, 80), rel=1e-12)
    for order in (3, 10, 30):
        assert rdp_without_replacement_general(0.1, eps, order) >= rdp_without_replacement(0.1, sigma, order) * (1 - 1e-12)
    assert rdp_without_replacement_general(1.0, eps, 5) == eps(5)


def test_sum_of_skellam_shares_is_skellam_of_the_total_variance():
    rng = np.random.default_rng(0)
    shares = sum(skellam_noise(400_000, 2.5, rng) for _ in range(8))  # 8 parties, variance 2.5 each
    assert shares.dtype == np.int64
    assert shares.mean() == pytest.approx(0.0, abs=0.02)
    assert shares.var() == pytest.approx(20.0, rel=0.01)
    # Sk(μ) has excess kurtosis 1/V: 0.05 here (a Gaussian has 0)
    kurt = float(np.mean(shares.astype(float) ** 4) / shares.var() ** 2 - 3)
    assert kurt == pytest.approx(1 / 20.0, abs=0.02)


def test_integer_noise_wraps_in_the_ring_and_skips_exact_segments():
    values = np.zeros(10_000, dtype=np.uint32)
    add_integer_noise(values, 1e6, np.random.default_rng(1), exact=[(0, 100)])
    signed = values.view(np.int32).astype(np.int64)
    assert np.all(signed[:100] == 0)
    assert (signed[100:] < 0).any() and signed[100:].std() == pytest.approx(1000, rel=0.05)


def test_skellam_accountant_composes_and_restores():
    r = SkellamRound(0.1, 1.0, 1e6, 26_010, (2.0 * 1e6) ** 2)
    acc = SkellamAccountant()
    for _ in range(30):
        acc.step(r)
    assert acc.history == [(r, 30)]
    again = SkellamAccountant()
    again.load_state_dict(acc.state_dict())
    assert again.get_epsilon(1e-5) == acc.get_epsilon(1e-5) > 0
    # dropped parties took their share of the noise: a round with less variance costs more
    worse = SkellamAccountant()
    worse.step(r, 29)
    worse.step(SkellamRound(0.1, 1.0, 1e6, 26_010, (1.5 * 1e6) ** 2))
    assert worse.get_epsilon(1e-5) > acc.get_epsilon(1e-5)


# ---------------------------------------------------------------- tree aggregation (DP-FTRL)
@pytest.mark.parametrize("noise,published", [(1.13, 19.74), (8.83, 2.04)])
def test_tree_restart_matches_kairouz_et_al_stackoverflow(noise, published):
    # Kairouz et al. 2021, StackOverflow: 1,600 rounds in one tree, δ = 1e-6; TF-Privacy's
    # tree_aggregation_accountant_test asserts ε below these published values.
    eps = rdp_to_epsilon(TF_ORDERS, rdp_tree_restart(noise, [1600], TF_ORDERS), 1e-6)[0]
    assert eps <= published
    assert eps >= 0.85 * published


@pytest.mark.parametrize("participation,separation,steps,expected", [
    (1, 7, 8, 4), (3, 3, 9, 11), (3, 2, 7, 9),
    (8, 2, 24, 88),  # the paper's example where the worst case beats the greedy placement
])
def test_single_tree_worst_case_sensitivity(participation, separation, steps, expected):
    assert tree_sensitivity_squared(participation, separation, steps) == expected


@pytest.mark.parametrize("steps", [3, 8, 11, 19])
def test_single_tree_every_leaf_and_two_participations(steps):
    bits = bin(steps)[2:]
    depths = [len(bits) - 1 - i for i, b in enumerate(bits) if b == "1"]
    assert tree_sensitivity_squared(steps, 0, steps) == sum(2**d * (2 ** (d + 1) - 1) for d in depths)
    assert tree_sensitivity_squared(2, 0, steps) == 2 + 4 * (len(bits) - 1)  # two leaves, deepest subtree


def test_tree_restart_without_a_tree_is_the_gaussian():
    # One leaf per tree: T compositions of the Gaussian (TF-Privacy's test_no_tree_no_sampling).
    rdp = rdp_tree_restart(0.7, [1] * 50, DEFAULT_ORDERS)
    assert rdp_to_epsilon(DEFAULT_ORDERS, rdp, 1e-5)[0] == pytest.approx(epsilon_for(0.7, 1.0, 50, 1e-5), rel=1e-9)
    assert np.allclose(rdp_single_tree(0.7, 8, 1, 7, DEFAULT_ORDERS), rdp_tree_restart(0.7, [8], DEFAULT_ORDERS))


def test_ftrl_epsilon_uses_replace_one_and_epochs():
    assert epochs(30, 10) == [10, 10, 10] and epochs(25, 10) == [10, 10, 5]
    z = smallest_noise(lambda z: ftrl_epsilon(z, 30, 10, 1e-5), 8.0, "test")
    assert ftrl_epsilon(z, 30, 10, 1e-5) <= 8.0
    # replace-one: sensitivity 2C, i.e. the tree accountant at z/2
    direct = rdp_to_epsilon(DEFAULT_ORDERS, rdp_tree_restart(z / 2, [10, 10, 10]), 1e-5)[0]
    assert ftrl_epsilon(z, 30, 10, 1e-5) == pytest.approx(direct)


def test_tree_noise_prefix_sums_carry_one_node_per_set_bit():
    # The noise of prefix t is the sum of the ⌈log₂⌉ node noises covering [1, t]: with unit node
    # noise its variance is popcount(t), and a restart starts from nothing.
    rng = np.random.default_rng(0)
    draws = 20_000
    tree = TreeNoise(1.0, lambda s, like: {k: rng.normal(0, s, np.shape(v)) for k, v in like.items()})
    like = {"w": np.zeros(draws)}
    total = np.zeros(draws)
    for t in range(1, 12):
        total += tree.next(like)["w"]
        assert total.var() == pytest.approx(bin(t).count("1"), rel=0.05)
    tree.restart()
    assert tree.next(like)["w"].var() == pytest.approx(1.0, rel=0.05)


def test_smallest_noise_never_overshoots():
    f = lambda z: 10.0 / (z + 0.1)  # noqa: E731
    z = smallest_noise(f, 2.0, "test")
    assert f(z) <= 2.0 and f(z) >= 0.98 * 2.0
