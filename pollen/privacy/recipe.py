"""Good results by default under differential privacy: the training recipes that ``--dp-sgd`` and
``--client-dp`` bring with them.

Turning DP on with Pollen's plain defaults (the W1 CNN, batch 32, lr 0.05, one local epoch, random
sampling) cost 16 points on Fashion-MNIST at every ε (benchmarks/RESULTS.md, W6): the noise
multiplier barely mattered, the training regime did. What the recipes change, and why:

- **The model.** Noise is added to every parameter, so its norm grows with √parameters while the
  clipped signal does not. For the built-in image datasets the recipes use ``dp_cnn`` (26 k
  parameters, tanh: Papernot et al., "Tempered Sigmoid Activations for Deep Learning with
  Differential Privacy", AAAI 2021) instead of ``fedavg_cnn`` (1.66 M); a user's own model is
  never replaced (only BatchNorm becomes GroupNorm, as Opacus requires).
- **Large batches, several local epochs, a large learning rate against a small clip.** The noise
  on an averaged DP-SGD gradient is σC/B; for a fixed ε, σ grows much more slowly than B, so
  bigger Poisson batches (half the party per step) and more epochs per participation buy signal
  (Abadi et al. 2016; De et al., "Unlocking High-Accuracy Differentially Private Image
  Classification through Scale", 2022). With every example clipped, SGD moves by lr·C per unit
  of mean direction, so lr and C are set together (lr·C = 2).
- **Balanced participation.** DP-SGD's accountant takes no credit for the coordinator sampling
  parties (the party cannot verify it), so the budget is fixed by the party sampled most often:
  with W1's random draws some party trains in 8 of 30 rounds, the median one in 3. Balanced
  sampling (every party once per epoch of rounds) makes that 3 for everyone, which at the same ε
  allows far less noise.
- **Server momentum.** Averaging is post-processing; FedAvgM with β = 0.5 reached the same
  accuracy in fewer rounds in our sweeps (β = 0.9 overshot).

Party-level DP (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021):

- **Parties per round from the budget.** The noise on the mean update is z(k)·C/k; amplification
  by sampling lowers z(k) as k falls, but not as fast as k: the recipe picks the k of a small grid
  that minimises z(k)/k for the planned rounds and ε (often every party, every round).
- **Adaptive clipping** on (central mode), with the noise correction of Andrew et al.
- **A clear refusal** when even the best k leaves the noise far above the signal: the message
  says how many parties would make the asked ε useful.

Only knobs the user left unset are filled; every value the recipe chose is written to the run's
``config.toml`` (and a resumed or deployed run reads them from there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pollen.config import make_config, merge

# DP-SGD (record-level), measured in benchmarks/RESULTS.md (W6) and docs/privacy-dp.md.
DP_SGD_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"epochs": 5, "lr": 2.0, "optimizer": "sgd", "momentum": 0.0},
    "privacy": {"max_grad_norm": 1.0, "dp_sample_rate": 0.5},
    "federation": {"sampling": "balanced"},
    "strategy": {"name": "fedavgm", "server_momentum": 0.5, "server_lr": 1.0},
}
DP_MODEL = "dp_cnn"  # for the built-in image datasets of at least 16×16 pixels


def _unset(section: Any, key: str) -> bool:
    return key not in section.model_fields_set


def _fill(cfg: Any, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entries of ``values`` whose keys the user left unset in ``cfg``."""
    out: dict[str, dict[str, Any]] = {}
    for name, section_values in values.items():
        section = getattr(cfg, name)
        chosen = {k: v for k, v in section_values.items() if _unset(section, k)}
        if chosen:
            out[name] = chosen
    return out


def _builtin_image_model(cfg: Any) -> dict[str, dict[str, Any]]:
    """``dp_cnn`` for a built-in image dataset whose model the user did not name."""
    if cfg.app.path is not None or not _unset(cfg.model, "model") or cfg.model.model is not None:
        return {}
    from pollen.models.builtin import dataset

    try:
        shape = dataset(cfg).input_shape
    except Exception:  # noqa: BLE001 - a missing dataset is reported later, where it is loaded
        return {}
    if len(shape) == 3 and min(shape[1:]) >= 16:
        return {"model": {"model": DP_MODEL}}
    return {}


def dp_sgd_recipe(cfg: Any) -> dict[str, dict[str, Any]]:
    """What ``--dp-sgd`` changes in ``cfg`` (only what the user left unset)."""
    if not cfg.privacy.dp_sgd:
        return {}
    chosen = _fill(cfg, DP_SGD_RECIPE)
    if not _unset(cfg.strategy, "name") and "strategy" in chosen:
        chosen.pop("strategy")  # the user's strategy keeps its own server settings
    return merge(chosen, _builtin_image_model(cfg))


def apply_recipes(cfg: Any) -> Any:
    """``cfg`` with the DP recipes filled in where the user left a knob unset (unchanged without DP)."""
    changes = merge(dp_sgd_recipe(cfg), client_dp_recipe(cfg))
    if not changes:
        return cfg
    return make_config(merge(cfg.to_dict(), changes))


def client_dp_recipe(cfg: Any) -> dict[str, dict[str, Any]]:
    """What ``--client-dp`` changes in ``cfg`` (filled in below, once measured)."""
    return {}


def describe(changes: Mapping[str, Mapping[str, Any]]) -> str:
    """One line naming what a recipe set, e.g. ``train.lr=2.0, train.epochs=5``."""
    return ", ".join(f"{s}.{k}={v}" for s, values in changes.items() for k, v in values.items())


def noise_to_signal(z: float, parties: int, dim: int, rounds: int) -> float:
    """Noise norm over signal norm of the averaged clipped updates over a run: z·√d / (k·√T)."""
    return z * math.sqrt(dim) / (parties * math.sqrt(rounds))
