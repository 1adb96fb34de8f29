"""FedBN: Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization" (ICLR). BatchNorm layers — their affine weights *and* their running statistics —
stay on each party; everything else is averaged as FedAvg.

BatchNorm layers are found from the names alone: a module that owns a ``running_mean`` buffer is a
normalisation layer, and all of its tensors (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) stay local. Normalisation layers without running
statistics (a transformer's LayerNorm) are named instead (``--local-layers layer_norm``), the
"FedBN-style" variant for such models. The global model's BatchNorm therefore never
trains on the server: judge FedBN by the parties' personalised accuracy (``fed_accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pollen.errors import StrategyError
from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean


def batchnorm_modules(names: Sequence[str]) -> set[str]:
    """Module prefixes (``"features.1"``) that own a ``running_mean`` buffer."""
    return {n.rsplit(".", 1)[0] for n in names if n.endswith(".running_mean")}


@dataclass(frozen=True)
class BatchNormFilter(NameFilter):
    """Keep every tensor of every BatchNorm module local (plus ``keep_local`` substrings)."""

    def shared(self, names: Sequence[str]) -> tuple[str, ...] | None:
        modules = batchnorm_modules(names)
        if not modules and not self.keep_local:
            raise StrategyError("fedbn keeps BatchNorm layers local, but the model has none "
                                "(no tensor named '*.running_mean'); name other normalisation layers to keep local "
                                "(--local-layers layer_norm), use a model with BatchNorm, or --strategy fedavg")
        if self.keep_local and not any(s in n for n in names for s in self.keep_local):
            raise StrategyError(f"fedbn: no tensor matches the local layers {self.keep_local}; "
                                f"tensor names are: {', '.join(list(names)[:8])}…")
        prefixes = tuple(f"{m}." for m in sorted(modules))
        out = tuple(n for n in names if not n.startswith(prefixes) and not any(s in n for s in self.keep_local))
        if not out:
            raise StrategyError("fedbn: every tensor is a BatchNorm tensor; nothing would be shared")
        return out


def fedbn(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, local_layers: tuple[str, ...] = ()) -> Strategy:
    """FedAvg over every tensor except BatchNorm's and those of ``local_layers`` (other normalisation
    layers, such as a transformer's LayerNorms, matched by substring)."""
    return Strategy("fedbn", sampler, client, WeightedMean(), ServerOptimizer(server_lr), BatchNormFilter(local_layers))
