"""The one-run audit (Steinke, Nasr, Jagielski 2023): its p-values against closed forms and scipy,
its bound against mechanisms of known ε, and whole runs: without DP a large empirical ε, with DP
never above the accountant's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from pollen.errors import ConfigError
from pollen.privacy.audit import audit_scores, epsilon_lower_bound, p_value


def test_p_value_without_delta_is_the_binomial_tail():
    for m, r, v, eps in [(1000, 100, 80, 1.0), (1000, 200, 150, 0.5), (50, 50, 31, 0.2), (10, 4, 4, 3.0)]:
        p = math.exp(eps) / (1 + math.exp(eps))
        assert p_value(m, r, v, eps) == pytest.approx(stats.binom.sf(v - 1, r, p), rel=1e-9)


def test_all_guesses_right_has_a_closed_form():
    # v = r, δ = 0: P = p^r, so the bound is logit(α^(1/r)) at significance α.
    for r, alpha in [(100, 0.05), (40, 0.01), (500, 0.05)]:
        p = alpha ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0, alpha) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_delta_term_matches_the_papers_definition():
    # Steinke et al., Proposition 5.2: β + α·δ·2m with α = max_i P[v − i ≤ Bin < v] / i.
    m, r, v, eps, delta = 1000, 100, 70, 0.5, 1e-5
    p = math.exp(eps) / (1 + math.exp(eps))
    pmf = stats.binom.pmf(np.arange(r + 1), r, p)
    alpha = max(pmf[v - i:v].sum() / i for i in range(1, v + 1))
    expected = stats.binom.sf(v - 1, r, p) + alpha * delta * 2 * m
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)
    # a δ can only weaken the bound
    assert epsilon_lower_bound(m, r, v, delta) <= epsilon_lower_bound(m, r, v, 0.0)


def test_chance_level_guessing_gives_no_bound_and_bad_counts_are_refused():
    assert epsilon_lower_bound(1000, 100, 50) == 0.0
    assert epsilon_lower_bound(1000, 0, 0) == 0.0
    with pytest.raises(ConfigError, match="correct ≤ guesses ≤ canaries"):
        p_value(10, 20, 5, 1.0)


@pytest.mark.parametrize("true_eps", [0.5, 1.0, 2.0, 4.0])
def test_bound_stays_below_the_epsilon_of_randomised_response(true_eps):
    # The optimal attack on ε-DP randomised response of each canary's bit: the bound exceeds ε only
    # with probability ≤ 1 − confidence (at 95 % it did in 3 of these 40 runs, as it may), and comes
    # close to ε with many canaries. At 99.9 % confidence none of the 40 may exceed it.
    p = math.exp(true_eps) / (1 + math.exp(true_eps))
    bounds = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        included = rng.random(5000) < 0.5
        truthful = rng.random(5000) < p
        scores = np.where(truthful, included, ~included).astype(float) + 1e-3 * rng.random(5000)
        bounds.append(audit_scores(scores, included, confidence=0.999).epsilon)
    assert max(bounds) <= true_eps
    assert min(bounds) >= 0.6 * true_eps


def test_scores_without_signal_give_a_bound_near_zero():
    bounds = [audit_scores(np.random.default_rng(s).random(1000), np.random.default_rng(s + 99).random(1000) < 0.5).epsilon
              for s in range(20)]
    assert sum(b > 0 for b in bounds) <= 2  # the 95 % confidence allows one in twenty
    assert max(bounds) < 0.5


def _record_audit_cfg(digits_cfg, **privacy):
    return digits_cfg(data={"dataset": "digits", "parties": 4, "holdout": 0.0},
                      model={"model": "small_cnn"},
                      train={"epochs": 5, "lr": 0.1, "batch_size": 16},
                      federation={"rounds": 2, "parties_per_round": 4},
                      privacy={"audit_canaries": 200, **privacy})


@pytest.mark.parametrize("seed", [0, 1])
def test_dp_sgd_audit_stays_below_the_accountant(digits_cfg, seed):
    pytest.importorskip("opacus")
    from pollen.simulation import simulate
    from pollen.telemetry.report import privacy_summary

    cfg = _record_audit_cfg(digits_cfg, dp_sgd=True, target_epsilon=2.0, delta=1e-5)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})})
    s = privacy_summary(simulate(cfg).history)
    assert s["privacy_unit"] == "record" and s["delta"] == 1e-5 and "RDP" in s["accountant"]
    assert 0 < s["epsilon_max"] <= 2.0
    assert s["epsilon_empirical"] is not None and s["epsilon_empirical"] <= s["epsilon_max"]
    assert not s["audit_violation"]


@pytest.mark.parametrize("mode,extra", [("central", {}), ("distributed", {"secagg": True}), ("ftrl", {})])
def test_party_level_audit_stays_below_the_accountant(digits_cfg, mode, extra):
    from pollen.simulation import simulate
    from pollen.telemetry.report import privacy_summary

    cfg = digits_cfg(data={"dataset": "digits", "parties": 40, "holdout": 0.0}, model={"model": "logreg"},
                     federation={"rounds": 4, "parties_per_round": 20},
                     privacy={"client_dp": mode, "client_noise_multiplier": 1.0, "delta": 1e-5, "clip_norm": 0.5,
                              "audit_canaries": 4, **extra})
    result = simulate(cfg)
    s = privacy_summary(result.history)
    assert s["privacy_unit"] == "party" and s["delta"] == 1e-5
    assert s["epsilon_max"] > 0 and s["epsilon_empirical"] is not None
    assert s["epsilon_empirical"] <= s["epsilon_max"]
    assert all(r.get("privacy_unit") == "party" for r in result.history)


def test_audit_is_refused_where_it_cannot_run(digits_cfg):
    from pollen.privacy.checks import problems

    cfg = digits_cfg(privacy={"audit_canaries": 10}, simulation={"backend": "process"})
    assert any("--backend inline" in p for p in problems(cfg))
    cfg = digits_cfg(data={"dataset": "digits", "parties": 10},
                     privacy={"audit_canaries": 8, "client_dp": "central", "client_noise_multiplier": 1.0, "delta": 1e-5})
    assert any("canary parties would replace" in p for p in problems(cfg))


def test_pollen_audit_without_dp_finds_a_large_empirical_epsilon(tmp_path, capsys):
    from pollen.cli import main
    from pollen.telemetry.history import read_history
    from pollen.telemetry.report import privacy_summary

    code = main(["audit", "--dataset", "digits", "--parties", "4", "--parties-per-round", "4", "--rounds", "2",
                 "--model", "small_cnn", "--epochs", "5", "--lr", "0.1", "--batch-size", "16", "--holdout", "0",
                 "--audit-canaries", "200", "--runs-dir", str(tmp_path), "--name", "a", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "empirical ε ≥" in out and "accountant's ε = ∞ (no DP)" in out and "unit: record" in out
    run = tmp_path / "a"
    s = privacy_summary(read_history(run))
    assert s["privacy_unit"] == "record" and s["epsilon_max"] is None and s["accountant"] is None
    assert s["epsilon_empirical"] > 1.0
    assert json.loads((run / "summary.json").read_text())["privacy"]["epsilon_empirical"] == s["epsilon_empirical"]
    report = (run / "report.md").read_text()
    assert report.count("## Privacy") == 1 and "∞ (no DP)" in report
