"""Accountants against published values and Opacus; the noise solver never overshoots."""

from __future__ import annotations

import math

import pytest

from pollen.errors import ConfigError, PrivacyError
from pollen.privacy.accountant import (
    PRVAccountant,
    RDPAccountant,
    epsilon_for,
    make_accountant,
    noise_multiplier_for,
    participation_steps,
)


def test_rdp_matches_opacus_golden_value():
    # opacus/tests/accountants_test.py: σ = 1.5, q = 0.04, 90 epochs = 2250 steps, δ = 1e-5.
    acc = RDPAccountant()
    for _ in range(2250):
        acc.step(1.5, 0.04)
    assert acc.get_epsilon(1e-5) == pytest.approx(7.32911117143, rel=1e-9)


def test_tf_privacy_mnist_tutorial_classic_conversion():
    # TF-Privacy MNIST tutorial: σ = 1.1, batch 256 of 60,000, 60 epochs → ε ≈ 3.01.
    acc = RDPAccountant(conversion="classic")
    acc.step(1.1, 256 / 60000, math.ceil(60 * 60000 / 256))
    assert acc.get_epsilon(1e-5) == pytest.approx(3.01, abs=0.01)


@pytest.mark.parametrize("sigma,q,steps", [(0.8, 0.01, 500), (1.1, 0.05, 100), (3.0, 0.2, 50), (1.0, 1.0, 10)])
def test_rdp_equals_opacus_rdp_accountant(sigma, q, steps):
    from opacus.accountants import RDPAccountant as OpacusRDP

    ours = RDPAccountant()
    ours.step(sigma, q, steps)
    theirs = OpacusRDP()
    theirs.history = [(sigma, q, steps)]
    assert ours.get_epsilon(1e-5) == pytest.approx(theirs.get_epsilon(delta=1e-5), rel=1e-9)


def test_without_replacement_bound_behaves():
    # q = 1 is the plain Gaussian mechanism; subsampling helps; more noise helps.
    full = epsilon_for(2.0, 1.0, 10, 1e-5, sampling="without_replacement")
    # (the without-replacement bound minimises over integer orders only: within 1 %)
    assert full == pytest.approx(epsilon_for(2.0, 1.0, 10, 1e-5), rel=0.01)
    sub = epsilon_for(2.0, 0.1, 10, 1e-5, sampling="without_replacement")
    assert sub < full
    assert epsilon_for(4.0, 0.1, 10, 1e-5, sampling="without_replacement") < sub
    # never below the Poisson value at the same rate (sampling without replacement is not looser
    # than Poisson by more than the constant in Wang et al.'s bound; it must not be tighter here)
    assert sub >= epsilon_for(2.0, 0.1, 10, 1e-5) * 0.99


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("q,steps", [(0.01, 1000), (0.1, 60)])
def test_noise_solver_never_overshoots(target, q, steps):
    sigma = noise_multiplier_for(target, 1e-5, q, steps)
    eps = epsilon_for(sigma, q, steps, 1e-5)
    assert eps <= target
    assert eps >= 0.98 * target  # and it does not waste budget either


def test_noise_solver_without_replacement_never_overshoots():
    sigma = noise_multiplier_for(4.0, 1e-5, 0.1, 30, sampling="without_replacement")
    assert epsilon_for(sigma, 0.1, 30, 1e-5, sampling="without_replacement") <= 4.0


def test_noise_solver_refuses_unreachable_target():
    with pytest.raises(PrivacyError, match="cannot be met"):
        noise_multiplier_for(1e-6, 1e-5, 1.0, 10**6)


def test_prv_is_tighter_than_rdp_on_golden_setting():
    prv = PRVAccountant()
    prv.step(1.5, 0.04, 2250)
    eps = prv.get_epsilon(1e-5)
    assert 6.0 < eps < 7.32911117143


def test_state_dict_round_trip_and_names():
    acc = make_accountant("rdp")
    acc.step(1.0, 0.1, 5)
    acc.step(1.0, 0.1, 5)
    acc.step(2.0, 0.1, 1)
    other = make_accountant("rdp")
    other.load_state_dict(acc.state_dict())
    assert other.history == [(1.0, 0.1, 10), (2.0, 0.1, 1)]
    assert other.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    assert make_accountant("rdp").get_epsilon(1e-5) == 0.0
    with pytest.raises(ConfigError, match="rdp, prv"):
        make_accountant("gdp")
    with pytest.raises(ConfigError, match="Poisson"):
        PRVAccountant("without_replacement")


def test_participation_steps():
    assert participation_steps(1, 600, 32) == (32 / 600, 19)
    assert participation_steps(2, 10, 32) == (1.0, 2)


def test_without_replacement_forward_differences_are_precise():
    import decimal

    from pollen.privacy import rdp

    for sigma in (0.7, 3.0, 50.0):
        got = rdp._log_forward_diffs.__wrapped__(sigma, 20)
        ctx = decimal.Context(prec=400, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
        g = [ctx.exp(ctx.divide(decimal.Decimal((k - 1) * k), decimal.Decimal(2 * sigma**2))) for k in range(21)]
        for ell in (3, 10, 20):
            exact = decimal.Decimal(0)
            for k in range(ell + 1):
                exact = ctx.add(exact, ctx.multiply(decimal.Decimal((-1) ** (ell - k) * math.comb(ell, k)), g[k]))
            assert got[ell] == pytest.approx(float(abs(exact).ln(ctx)), rel=1e-9, abs=1e-9)


def test_without_replacement_theorem_27_is_tighter_and_vanishes_with_noise():
    from pollen.privacy.rdp import rdp_without_replacement

    # Theorem 9 alone (2·e^{(j-1)ε(j)} for every j ≥ 3) never goes below a floor as σ grows;
    # Theorem 27 does go to 0.
    assert rdp_without_replacement(0.2, 1000.0, 8) < 1e-6
    assert rdp_without_replacement(0.2, 2.0, 8) < rdp_without_replacement(0.2, 1.0, 8)
    eps = [epsilon_for(s, 0.2, 30, 1e-5, sampling="without_replacement") for s in (2.0, 8.0, 32.0)]
    assert eps[0] > eps[1] > eps[2] > 0
