"""The default DP recipes: what ``--dp-sgd`` / ``--client-dp`` bring when only ε is given, that the
CLI uses them, that a user's own values win, and the refusals (too small a federation, Gaussian
noise under masking)."""

from __future__ import annotations

import pytest

from pollen.cli import build_parser, config_from_args
from pollen.compose import assemble
from pollen.config import make_config
from pollen.errors import ConfigError, PrivacyError
from pollen.privacy.checks import check_config
from pollen.privacy.recipe import CLIENT_DP_RECIPE, DP_SGD_RECIPE, best_parties_per_round, noise_to_signal


def _cli(*flags: str):
    args = build_parser("simulate").parse_args(["simulate", *flags])
    return assemble(config_from_args(args)).cfg


@pytest.mark.parametrize("epsilon", ["8", "4", "2"])
def test_cli_dp_sgd_uses_the_recipe(epsilon):
    pytest.importorskip("opacus")
    cfg = _cli("--dataset", "fmnist", "--parties", "100", "--dp-sgd", "--target-epsilon", epsilon, "--delta", "1e-5")
    for section, values in DP_SGD_RECIPE.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)
    assert cfg.model.model == "scatter_linear"
    assert cfg.train.epochs != make_config({}).train.epochs or cfg.train.lr != make_config({}).train.lr


def test_user_values_win_over_the_recipe():
    pytest.importorskip("opacus")
    cfg = _cli("--dataset", "fmnist", "--parties", "100", "--dp-sgd", "--target-epsilon", "8", "--delta", "1e-5",
               "--lr", "0.3", "--model", "fedavg_cnn", "--strategy", "fedadam")
    assert cfg.train.lr == 0.3 and cfg.model.model == "fedavg_cnn" and cfg.strategy.name == "fedadam"
    assert cfg.train.epochs == DP_SGD_RECIPE["train"]["epochs"]  # what the user left unset still comes from it
    assert cfg.federation.sampling == "balanced"


def test_a_batch_size_the_user_set_is_the_poisson_batch():
    pytest.importorskip("opacus")
    base = ("--dataset", "fmnist", "--parties", "100", "--dp-sgd", "--target-epsilon", "8", "--delta", "1e-5")
    assert _cli(*base).privacy.dp_sample_rate == DP_SGD_RECIPE["privacy"]["dp_sample_rate"]
    cfg = _cli(*base, "--batch-size", "64")  # not half the party per step: q = 64 / records
    assert cfg.train.batch_size == 64 and cfg.privacy.dp_sample_rate is None
    assert cfg.train.lr == DP_SGD_RECIPE["train"]["lr"]  # the rest of the recipe still applies
    assert _cli(*base, "--batch-size", "64", "--dp-sample-rate", "0.2").privacy.dp_sample_rate == 0.2


def test_no_recipe_without_dp():
    cfg = _cli("--dataset", "digits", "--parties", "4")
    assert cfg.model.model != "scatter_linear" and cfg.federation.sampling == "random" and cfg.strategy.name == "fedavg"


def test_cli_client_dp_uses_the_recipe_and_picks_parties_per_round():
    cfg = _cli("--dataset", "fmnist", "--parties", "1000", "--client-dp", "central", "--target-epsilon", "8",
               "--delta", "1e-5")
    assert cfg.model.model == "scatter_linear" and cfg.privacy.adaptive_clip
    for section, values in CLIENT_DP_RECIPE.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)
    k = cfg.federation.parties_per_round
    probe = make_config({"data": {"dataset": "fmnist", "parties": 1000},
                         "privacy": {"client_dp": "central", "target_epsilon": 8.0, "delta": 1e-5}})
    assert (k, best_parties_per_round(probe, adaptive=True)[1]) == best_parties_per_round(probe, adaptive=True)
    # no other k of the grid puts less noise on the mean
    from pollen.privacy.recipe import _noise_for

    assert all(_noise_for(probe, j) / j >= _noise_for(probe, k) / k * (1 - 1e-9) for j in (10, 100, 200, 500))


def test_ftrl_recipe_samples_balanced_with_k_dividing_n():
    cfg = _cli("--dataset", "fmnist", "--parties", "1000", "--client-dp", "ftrl", "--target-epsilon", "8",
               "--delta", "1e-5")
    assert cfg.federation.sampling == "balanced" and 1000 % cfg.federation.parties_per_round == 0
    assert not cfg.privacy.adaptive_clip  # DP-FTRL's tree noise is sized to a fixed clip norm


def test_too_small_a_federation_is_refused_with_the_size_it_needs():
    with pytest.raises(PrivacyError, match=r"needs about [\d,]+ parties") as err:
        _cli("--dataset", "fmnist", "--parties", "20", "--client-dp", "central", "--target-epsilon", "1",
             "--delta", "1e-5", "--rounds", "30")
    assert "ε = 1.0" in str(err.value) and "20 parties" in str(err.value)


def test_noise_to_signal_formula():
    assert noise_to_signal(2.0, 100, 10_000, 25) == pytest.approx(2.0 * 100 / (100 * 5))


def _secagg_cfg(**privacy):
    return make_config({"data": {"dataset": "digits", "parties": 10}, "federation": {"rounds": 3},
                        "privacy": {"client_dp": "distributed", "secagg": True, "client_noise_multiplier": 1.0,
                                    "delta": 1e-5, **privacy}})


def test_gaussian_noise_under_masking_is_refused():
    with pytest.raises(ConfigError, match="guarantee would be void"):
        check_config(_secagg_cfg(client_dp_noise="gaussian"))
    check_config(_secagg_cfg())  # Skellam, the default under --secagg
    with pytest.raises(ConfigError, match="without --secagg"):
        check_config(make_config({"data": {"dataset": "digits", "parties": 10},
                                  "privacy": {"client_dp": "distributed", "client_noise_multiplier": 1.0,
                                              "delta": 1e-5}}))
    with pytest.raises(ConfigError, match="inside a secure sum"):
        check_config(make_config({"data": {"dataset": "digits", "parties": 10},
                                  "privacy": {"client_dp": "central", "client_dp_noise": "skellam",
                                              "client_noise_multiplier": 1.0, "delta": 1e-5}}))
