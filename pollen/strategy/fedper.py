"""FedPer: Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"
(arXiv:1912.00818). The base layers are averaged as FedAvg; the personalisation layers (by default
the last layer, the classifier head) stay on each party and are never sent.

Two accuracies are reported: ``accuracy`` is the global model (shared body + the never-trained
global head) on the server's test set; ``fed_accuracy`` and ``fed_accuracy_parties`` are each
party's personalised model (shared body + its own head) on its held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pollen.errors import StrategyError
from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean


def last_layer(names: Sequence[str]) -> str:
    """The module that owns the last tensor of the state (``"fc2"``, ``"head"``, ``"classifier.3"``)."""
    if not names:
        raise StrategyError("fedper: the model has no tensors")
    return names[-1].rsplit(".", 1)[0]


@dataclass(frozen=True)
class HeadFilter(NameFilter):
    """Keep the personalisation layers local: the modules named in ``keep_local`` (module prefixes
    or substrings), or the model's last layer when ``keep_local`` is empty."""

    def shared(self, names: Sequence[str]) -> tuple[str, ...] | None:
        names = list(names)
        if self.keep_local:
            local = [n for n in names if any(n.startswith(f"{s}.") or s in n for s in self.keep_local)]
        else:
            head = last_layer(names)
            local = [n for n in names if n.rsplit(".", 1)[0] == head]
        if not local:
            raise StrategyError(f"fedper: no tensor matches the local layers {self.keep_local}; "
                                f"tensor names are: {', '.join(names[:8])}…")
        out = tuple(n for n in names if n not in set(local))
        if not out:
            raise StrategyError("fedper: every tensor would stay local; nothing would be shared")
        return out


def fedper(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, local_layers: tuple[str, ...] = ()) -> Strategy:
    """FedAvg over the base layers; ``local_layers`` (default: the last layer) stay on parties."""
    return Strategy("fedper", sampler, client, WeightedMean(), ServerOptimizer(server_lr), HeadFilter(local_layers))
