"""Build the SecAgg+ step from a ``RunConfig`` and refuse combinations that cannot work."""

from __future__ import annotations

import logging
from typing import Any

from pollen.errors import ConfigError
from pollen.privacy.secagg.graph import is_safe, plan
from pollen.privacy.secagg.protocol import SecAggParams
from pollen.privacy.secagg.step import SecAggPlus

log = logging.getLogger("pollen")


def secagg_step(cfg: Any, noise: Any = None) -> SecAggPlus:
    """The ``mask`` step for ``--secagg``.

    Weights: updates are weighted by example count (FedAvg), except under party-level DP, where
    each clipped update counts once (a weight would scale the sensitivity the noise is sized for).
    ``noise``: distributed Skellam noise (``pollen.privacy.distributed.SkellamNoise``) the parties
    add inside the ring, after quantisation.

    Parameters fixed here are the ones each party fixes when it joins (its config is the run's):
    k from the planned parties per round, t from ``--secagg-threshold``, checked to be above half
    of a neighbourhood unless ``--secagg-trust-coordinator`` states the risk.

    Raises:
        ConfigError: ``--secagg`` with ``--he``, with a compression codec, with rounds of one party,
            or with a threshold not above half of a neighbourhood (without the override).
    """
    p = cfg.privacy
    if getattr(p, "he", False):
        raise ConfigError("--secagg and --he both hide single updates; choose one")
    codec = getattr(getattr(cfg, "compression", None), "codec", "none")
    if codec != "none":
        raise ConfigError(f"--secagg masks 32-bit field elements and cannot follow codec {codec!r} "
                          "(masked values do not compress); use --codec none")
    from pollen.strategy.registry import sampler_from_config

    per_round = sampler_from_config(cfg).sample_size(cfg.data.parties)
    if per_round < 2:
        raise ConfigError(f"--secagg needs at least 2 parties per round (got {per_round}): the sum of one "
                          "update is the update")
    from pollen.privacy.plan import secagg_coordinate_clip

    weighted = getattr(p, "client_dp", "off") == "off"
    trust = bool(getattr(p, "secagg_trust_coordinator", False))
    k, t = plan(p.secagg_threshold, p.secagg_neighbours, per_round)
    if not is_safe(k, t) and not trust:
        raise ConfigError(f"--secagg-threshold {p.secagg_threshold:g} gives t = {t} of a party's {k + 1} share holders, "
                          "not more than half: a coordinator that lies about who dropped out could then rebuild single "
                          f"updates. Use --secagg-threshold above 0.5 (e.g. {2 / 3:.3g}), or accept that risk with "
                          "--secagg-trust-coordinator (secure only if the coordinator follows the protocol)")
    if trust and not is_safe(k, t):
        log.warning("--secagg-trust-coordinator: t = %d of %d share holders; secure aggregation holds only while the "
                    "coordinator follows the protocol (a lying one can rebuild single updates)", t, k + 1)
    params = SecAggParams(threshold=p.secagg_threshold, neighbours=p.secagg_neighbours, planned=per_round,
                          trust_coordinator=trust, bits=p.secagg_bits, clip=secagg_coordinate_clip(cfg),
                          weighted=weighted, dropout=p.secagg_dropout, timeout=cfg.federation.round_timeout,
                          seed=cfg.run.seed)
    return SecAggPlus(params, noise=noise)
