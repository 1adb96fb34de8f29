"""Refuse, before a run starts, privacy configurations that cannot work, saying why.

``check_config(cfg)`` runs every rule in ``CHECKS`` (this module's rules, in order) and raises one
``ConfigError`` listing all the problems found. A rule is ``rule(cfg) -> str | None`` (the reason,
or None when fine). What a combination of update steps can do (a codec or a median under
masking) is not checked here but once, on the built pipeline, by
``pollen.transforms.check_pipeline`` (called by ``pollen.compose.assemble`` before any data is
loaded).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from pollen.errors import ConfigError, MissingExtraError, PollenError

Rule = Callable[..., "str | None"]


def _strategy(cfg):
    from pollen.compose import build_strategy

    return build_strategy(cfg)


def _round_one(cfg):
    """What parties are told in round 1, before any filter on tensor names (FedBN's and FedPer's
    filters need the model's real names, which no check has)."""
    return _strategy(cfg).client.configure(1, None)


def _dp_needs_delta(cfg) -> str | None:
    p = cfg.privacy
    users = [name for name, on in (("--dp-sgd", p.dp_sgd), (f"--client-dp {p.client_dp}", p.client_dp != "off")) if on]
    if users and p.delta is None:
        return (f"{' and '.join(users)} {'need' if len(users) > 1 else 'needs'} a δ: (ε, δ)-DP is meaningless without one. Add --delta, e.g. "
                "--delta 1e-5 (it should be well below 1 / the number of records or parties protected)")
    return None


def _dp_needs_noise(cfg) -> str | None:
    p = cfg.privacy
    if p.dp_sgd and p.noise_multiplier is None and p.target_epsilon is None:
        return "--dp-sgd needs --noise-multiplier (e.g. 1.1) or --target-epsilon (e.g. 8) to set its noise"
    if p.client_dp != "off" and p.client_noise_multiplier is None and p.target_epsilon is None:
        return f"--client-dp {p.client_dp} needs --client-noise-multiplier or --target-epsilon to set its noise"
    if p.target_epsilon is not None and not p.dp_sgd and p.client_dp == "off":
        return "--target-epsilon does nothing without --dp-sgd or --client-dp central|local|distributed"
    return None


def _dp_sgd_needs_opacus(cfg) -> str | None:
    if cfg.privacy.dp_sgd and importlib.util.find_spec("opacus") is None:
        raise MissingExtraError("opacus", "dp", "DP-SGD (--dp-sgd)")
    return None


def _prv_is_for_dp_sgd(cfg) -> str | None:
    p = cfg.privacy
    if p.accountant == "prv" and not p.dp_sgd:
        return ("--accountant prv accounts DP-SGD's Poisson batches; party-level DP samples a fixed number of "
                "parties without replacement, which only the RDP accountant covers here: use --accountant rdp")
    return None


def _adaptive_clip_is_central(cfg) -> str | None:
    p = cfg.privacy
    from pollen.privacy.plan import client_noise

    if p.client_dp == "distributed" and client_noise(cfg) == "skellam":
        return None  # the count rides noised inside the secure sum (pollen.privacy.distributed)
    if p.adaptive_clip and p.client_dp in ("local", "distributed"):
        return (f"--adaptive-clip needs the count of clipped updates noised where no one sees it alone: with "
                f"--client-dp {p.client_dp} the coordinator is not trusted to; use --client-dp central, "
                "--client-dp distributed --secagg (the count is summed securely with Skellam noise), or a fixed --clip-norm")
    if p.adaptive_clip and p.client_dp == "off":
        return "--adaptive-clip adapts party-level DP clipping: also set --client-dp central"
    return None


def _distributed_noise_needs_a_secure_sum(cfg) -> str | None:
    p = cfg.privacy
    if p.client_dp == "distributed" and not (p.secagg or p.he):
        return ("--client-dp distributed gives each party only its share of the noise (z/√k): without --secagg "
                "(or --he) the coordinator sees every update with that little noise, and the accounted ε would not "
                "hold; add --secagg, or use --client-dp central")
    return None


def _noise_survives_masking(cfg) -> str | None:
    p = cfg.privacy
    if p.client_dp_noise == "gaussian" and p.client_dp == "distributed" and p.secagg:
        return ("continuous Gaussian noise added before masking is rounded into SecAgg's ring together with the "
                "update, and a sum of rounded noisy values is not the Gaussian the accountant assumes: the "
                "guarantee would be void. Use --client-dp-noise skellam (the default under --secagg): integer noise "
                "added inside the ring, with its own accountant")
    if p.client_dp_noise == "skellam" and not (p.client_dp == "distributed" and p.secagg):
        return ("--client-dp-noise skellam is integer noise the parties add inside a secure sum: use it with "
                "--client-dp distributed --secagg")
    return None


def _ftrl_needs_balanced_participation(cfg) -> str | None:
    p, f = cfg.privacy, cfg.federation
    if p.client_dp != "ftrl":
        return None
    if p.adaptive_clip:
        return "--client-dp ftrl uses a fixed clip norm (its tree noise is sized to it): drop --adaptive-clip"
    if f.sampling != "balanced":
        return ("--client-dp ftrl's accountant needs every party at most once per tree (epoch): use --sampling "
                "balanced (the default with ftrl)")
    from pollen.strategy.registry import sampler_from_config

    k, n = sampler_from_config(cfg).sample_size(cfg.data.parties), cfg.data.parties
    if n % k:
        return (f"--client-dp ftrl restarts its tree every N/k rounds; {n} parties are not a whole number of rounds "
                f"of {k}: choose --parties-per-round dividing {n}")
    return None


def _audit_runs_inline(cfg) -> str | None:
    p = cfg.privacy
    if p.audit_canaries <= 0:
        return None
    if cfg.simulation.backend != "inline":
        return ("the one-run audit inserts canaries and watches the coordinator within one process: run it with "
                "--backend inline")
    if p.dp_sgd and p.client_dp != "off":
        return ("the audit measures one unit of privacy: with both --dp-sgd and --client-dp, audit each on its own "
                "run (canary records for DP-SGD, canary parties for party-level DP)")
    if p.client_dp != "off" and p.audit_canaries > cfg.data.parties // 2:
        return (f"{p.audit_canaries} canary parties would replace most of the {cfg.data.parties} parties; use at "
                f"most {cfg.data.parties // 10} (a tenth)")
    return None


def _dp_sgd_without_proximal_term(cfg) -> str | None:
    if cfg.privacy.dp_sgd and _round_one(cfg).proximal_mu > 0:
        return (f"strategy {cfg.strategy.name!r} adds a proximal term to the loss, which DP-SGD's per-example "
                "clipping would silently drop; use fedavg/fedadam/… with --dp-sgd")
    return None


def _dp_sgd_owns_the_local_loop(cfg) -> str | None:
    if not cfg.privacy.dp_sgd:
        return None
    hooks = set(_round_one(cfg).extra.get("client_hooks") or ()) & {"pfedme", "ditto"}
    if hooks:
        return (f"strategy {cfg.strategy.name!r} trains a personal model in its own local steps, which DP-SGD's "
                "per-example clipping and accounting do not cover; use fedavg/fedper/fedbn/… with --dp-sgd")
    return None


def _noise_needs_a_mean(cfg) -> str | None:
    aggregator = _strategy(cfg).aggregator
    if cfg.privacy.client_dp != "off" and not aggregator.linear:
        return (f"party-level DP calibrates its noise to the mean of clipped updates, but aggregator "
                f"{aggregator.name!r} is not a mean; use a mean-based strategy (fedavg, fedavgm, fedadam, …)")
    return None


def _client_dp_steps_build(cfg) -> str | None:
    """Calibrate the noise now (the target may be unreachable, the adaptive correction impossible)."""
    p = cfg.privacy
    if p.client_dp == "off" or p.delta is None or (p.client_noise_multiplier is None and p.target_epsilon is None):
        return None  # reported by the rules above
    from pollen.privacy.plan import client_dp_steps

    try:
        client_dp_steps(cfg)
    except PollenError as exc:
        return str(exc)
    return None


# Every rule, in the order its reason is reported.
CHECKS: tuple[Rule, ...] = (_dp_needs_delta, _dp_needs_noise, _dp_sgd_needs_opacus, _prv_is_for_dp_sgd,
                            _adaptive_clip_is_central, _distributed_noise_needs_a_secure_sum, _noise_survives_masking,
                            _ftrl_needs_balanced_participation, _audit_runs_inline, _dp_sgd_without_proximal_term,
                            _dp_sgd_owns_the_local_loop, _noise_needs_a_mean, _client_dp_steps_build)


def problems(cfg) -> list[str]:
    """Every reason the configuration cannot work (empty when it can)."""
    found = []
    for rule in CHECKS:
        reason = rule(cfg)
        if reason:
            found.append(reason)
    return found


def check_config(cfg) -> None:
    """Raise ``ConfigError`` naming every problem in ``cfg``'s privacy settings.

    Raises:
        ConfigError: one or more refused combinations (all listed).
        MissingExtraError: a feature's optional package is not installed.
    """
    found = problems(cfg)
    if found:
        raise ConfigError("this configuration cannot work:\n  - " + "\n  - ".join(found))
