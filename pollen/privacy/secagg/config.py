"""Build the SecAgg+ step from a ``RunConfig`` and refuse combinations that cannot work."""

from __future__ import annotations

from typing import Any

from pollen.errors import ConfigError
from pollen.privacy.secagg.protocol import SecAggParams
from pollen.privacy.secagg.step import SecAggPlus


def secagg_step(cfg: Any, noise: Any = None) -> SecAggPlus:
    """The ``mask`` step for ``--secagg``.

    Weights: updates are weighted by example count (FedAvg), except under party-level DP, where
    each clipped update counts once (a weight would scale the sensitivity the noise is sized for).
    ``noise``: distributed Skellam noise (``pollen.privacy.distributed.SkellamNoise``) the parties
    add inside the ring, after quantisation.

    Raises:
        ConfigError: ``--secagg`` with ``--he``, with a compression codec, or with rounds of one party.
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
    params = SecAggParams(threshold=p.secagg_threshold, neighbours=p.secagg_neighbours, bits=p.secagg_bits,
                          clip=secagg_coordinate_clip(cfg), weighted=weighted, dropout=p.secagg_dropout,
                          timeout=cfg.federation.round_timeout, seed=cfg.run.seed)
    return SecAggPlus(params, noise=noise)
