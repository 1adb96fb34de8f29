"""Secure aggregation as the ``mask`` stage of the update pipeline.

Party (``encode``, last step of ``fit``, after clip → noise): keep the update on the party and
answer with signed public keys only (stage 1 of SecAgg+). Coordinator (``combine``): run stages 2–5 over
the same transport and hand the aggregator one update, the weighted mean of the included
updates. ``decode`` is the identity: what reaches the coordinator from ``fit`` is keys, not an
update. See ``protocol.py`` for the threat model and ``docs/secure-aggregation.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from pollen.privacy.secagg import constants as C
from pollen.privacy.secagg import party as party_side
from pollen.privacy.secagg import protocol
from pollen.privacy.secagg.protocol import SecAggParams, SecureSum
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import RoundConfig, Update


class SecAggPlus(UpdateStep):
    """SecAgg+ (Bell et al. 2020): pairwise + self masks, Shamir-shared, over a k-regular graph.

    Args:
        params: protocol parameters.
        drop: simulation/tests: stage name -> ids of parties that drop out after that stage's
            work (``fit`` included), on top of ``params.dropout``.
    """

    name = "secagg"
    stage = "mask"
    linear = True

    def __init__(self, params: SecAggParams | None = None, drop: Mapping[str, set[str]] | None = None,
                 noise: Any = None) -> None:
        self.params = params or SecAggParams()
        self.drop = {k: set(v) for k, v in (drop or {}).items()}
        self.noise = noise  # distributed Skellam noise the parties add in the ring (pollen.privacy.distributed)
        self.last: SecureSum | None = None

    # ------------------------------------------------------------ party side
    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Stage 1: keep the update on the party, send X25519 public keys."""
        return party_side.advertise(update, ctx, self.params)

    # ------------------------------------------------------------ server side
    def configure(self, config: RoundConfig) -> RoundConfig:
        """Simulated dropouts at stage 1 (tests) travel in the fit config."""
        gone = sorted(self.drop.get(C.STAGE_ADVERTISE, ()))
        if not gone:
            return config
        return config.with_(extra={**config.extra, C.EXTRA: {C.DROP: gone}})

    def combine(self, updates: list[Update], parties: Sequence[str], round: int, transport: Any) -> list[Update]:
        """Stages 2–5: the weighted mean of the updates that survived, as one update.

        Raises:
            RunError: too few parties or too many dropouts to recover the sum (see ``protocol.run``).
        """
        self.last = protocol.run(updates, parties, round, transport, self.params, self.drop, self.noise)
        if self.noise is not None:  # adaptive clipping's noised count rode in the sum: take it out
            return [self.noise.unpack(self.last.update, len(self.last.included))]
        return [self.last.update]

    def report(self, round: int) -> dict[str, float]:
        """Numbers for the round's history line."""
        s = self.last
        if s is None:
            return {}
        return {
            "secagg_parties": float(len(s.included)),
            "secagg_dropped": float(sum(len(v) for v in s.dropped.values())),
            "secagg_neighbours": float(s.k),
            "secagg_threshold": float(s.t),
            "secagg_error_bound": s.spec.error_bound,
            "secagg_clipped": s.clipped,
            "secagg_unmask_seconds": s.seconds_unmask,
            "bytes_up": float(s.bytes_up),  # stages 2–4; the round loop adds them to its own count
            "bytes_down": float(s.bytes_down),
        }

    def describe(self) -> dict[str, Any]:
        """The parameters, JSON-able."""
        return asdict(self.params)
