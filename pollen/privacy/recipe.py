"""Good results by default under differential privacy: the training recipes that ``--dp-sgd`` and
``--client-dp`` bring with them.

Turning DP on with Pollen's plain defaults (the W1 CNN, batch 32, lr 0.05, one local epoch, random
sampling) cost 16 points on Fashion-MNIST at every ε (benchmarks/RESULTS.md, W6): the noise
multiplier barely mattered, the training regime did. What the recipes change, and why:

- **The model.** Noise is added to every parameter and the clipped signal must be learned from a
  few noisy steps, so the recipes train a linear classifier on fixed ScatterNet features
  (``scatter_linear``: Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or
  Much More Data)", ICLR 2021) for the built-in image datasets: the features cost no privacy (they
  are not learned) and are computed once per dataset (``pollen.models.features``). On W6 this took
  DP-SGD at ε = 2 from 74–75 % (``dp_cnn``, 26 k parameters, tanh: Papernot et al. 2021) to ≈ 84 %,
  level with non-private FedAvg of the W1 CNN. Images whose sides are not multiples of 4 keep
  ``dp_cnn``; a user's own model is never replaced (only BatchNorm becomes GroupNorm, as Opacus
  requires).
- **Large batches, several local epochs, a large learning rate against a small clip.** The noise
  on an averaged DP-SGD gradient is σC/B; for a fixed ε, σ grows much more slowly than B, so
  bigger Poisson batches (half the party per step, unless you set a batch size: then that is the
  expected Poisson batch) and more epochs per participation buy signal
  (Abadi et al. 2016; De et al., "Unlocking High-Accuracy Differentially Private Image
  Classification through Scale", 2022). With every example clipped, SGD moves by lr·C per unit
  of mean direction, so lr and C are set together (lr·C = 1).
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

# DP-SGD (record-level), measured in benchmarks/RESULTS.md (W6) and docs/privacy-dp.md. One recipe for
# every ε: 2 local epochs (12 Poisson steps per party over W1's run) at lr 1 (lr·C = 1). With the CNN
# (W6 v3) the ε = 8 recipe was 5 epochs at lr 2 and stalled on its noise floor at small ε; with
# scatter_linear (W6 v4, seed 0) 5 epochs / lr 2 and 2 epochs / lr 1 tie at ε = 8 (86.4 / 86.4 %),
# and at ε = 4 the shorter one is 2.5 points better (85.9 % against 83.4 %, flat from round 10).
DP_SGD_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"epochs": 2, "lr": 1.0, "optimizer": "sgd", "momentum": 0.0},
    "privacy": {"max_grad_norm": 1.0, "dp_sample_rate": 0.5},
    "federation": {"sampling": "balanced"},
    "strategy": {"name": "fedavgm", "server_momentum": 0.5, "server_lr": 1.0},
}
DP_MODEL = "scatter_linear"  # for built-in images of at least 16×16 pixels whose sides are multiples of 4
DP_MODEL_OTHER_IMAGES = "dp_cnn"  # other built-in images of at least 16×16 pixels


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


def _builtin_image_model(cfg: Any, builtin_app: bool = True) -> dict[str, dict[str, Any]]:
    """``scatter_linear`` (or ``dp_cnn``) for a built-in image dataset whose model the user did not name."""
    if not builtin_app or cfg.app.path is not None or not _unset(cfg.model, "model") or cfg.model.model is not None:
        return {}
    from pollen.models.builtin import dataset

    try:
        shape = dataset(cfg).input_shape
    except Exception:  # noqa: BLE001 - a missing dataset is reported later, where it is loaded
        return {}
    if len(shape) == 3 and min(shape[1:]) >= 16:
        return {"model": {"model": DP_MODEL if shape[1] % 4 == 0 and shape[2] % 4 == 0 else DP_MODEL_OTHER_IMAGES}}
    return {}


def dp_sgd_recipe(cfg: Any, builtin_app: bool = True) -> dict[str, dict[str, Any]]:
    """What ``--dp-sgd`` changes in ``cfg`` (only what the user left unset; a user's app keeps its model)."""
    if not cfg.privacy.dp_sgd:
        return {}
    chosen = _fill(cfg, DP_SGD_RECIPE)
    if not _unset(cfg.train, "batch_size") and "dp_sample_rate" in chosen.get("privacy", {}):
        # the user's batch size is their Poisson batch (q = B/records), not half the party
        chosen["privacy"].pop("dp_sample_rate")
    if not _unset(cfg.strategy, "name") and "strategy" in chosen:
        chosen.pop("strategy")  # the user's strategy keeps its own server settings
    return merge(chosen, _builtin_image_model(cfg, builtin_app))


def apply_recipes(cfg: Any, builtin_app: bool = True) -> Any:
    """``cfg`` with the DP recipes filled in where the user left a knob unset (unchanged without DP;
    ``builtin_app`` False: a user's app, whose model is never replaced)."""
    changes = merge(dp_sgd_recipe(cfg, builtin_app), client_dp_recipe(cfg, builtin_app))
    if not changes:
        return cfg
    return make_config(merge(cfg.to_dict(), changes))


# Party-level DP (DP-FedAvg): the local work and the server optimizer; the parties per round come
# from the budget (``parties_per_round``), the model as for DP-SGD.
CLIENT_DP_RECIPE: dict[str, dict[str, Any]] = {
    "train": {"epochs": 1, "lr": 0.1, "batch_size": 16},
    "strategy": {"name": "fedavgm", "server_momentum": 0.9, "server_lr": 1.0},
}
PARTY_GRID = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)  # parties per round the recipe tries
# Noise norm over the largest signal norm of the run (``noise_to_signal``) above which party-level DP
# is refused as useless. A heuristic, set from W6: 1,000 parties of Fashion-MNIST at ε = 8 with the
# FedAvg CNN (1.66 M parameters) stood at 3.3 and lost 21 points; with dp_cnn the recipe stands at ≈ 0.8.
USEFUL_NOISE_TO_SIGNAL = 4.0


def _noise_for(cfg: Any, k: int) -> float:
    """z(k) for party-level DP with k parties per round (the accountant of the mode in use; Gaussian
    for Skellam, which tends to it on a fine grid)."""
    from pollen.privacy.accountant import noise_multiplier_for

    p, f, n = cfg.privacy, cfg.federation, cfg.data.parties
    if p.client_dp == "ftrl":
        from pollen.privacy.accountant import smallest_noise
        from pollen.privacy.ftrl import ftrl_epsilon

        per_epoch = max(1, n // k)
        return smallest_noise(lambda z: ftrl_epsilon(z, f.rounds, per_epoch, p.delta), p.target_epsilon, "DP-FTRL")
    return 2 * noise_multiplier_for(p.target_epsilon, p.delta, k / n, f.rounds, sampling="without_replacement")


def best_parties_per_round(cfg: Any, adaptive: bool = False) -> tuple[int, float] | None:
    """(k, z) minimising the noise on the mean, z(k)/k, over ``PARTY_GRID`` and every party (None
    when no k meets the target).

    With ``adaptive``, only k where adaptive clipping's correction exists are tried: z < 2σ_b, with
    σ_b = k/20 by default (``corrected_noise_multiplier``). DP-FTRL needs k to divide N (its tree
    restarts every N/k rounds).
    """
    from pollen.errors import PrivacyError

    p, n = cfg.privacy, cfg.data.parties
    best: tuple[float, int, float] | None = None
    for k in sorted({k for k in PARTY_GRID if k <= n} | {n}):
        if p.client_dp == "ftrl" and n % k:
            continue
        try:
            z = _noise_for(cfg, k)
        except PrivacyError:
            continue
        sigma_b = p.clip_count_stddev if p.clip_count_stddev is not None else k / 20
        if adaptive and z >= 2 * sigma_b:
            continue
        if best is None or z / k < best[0]:
            best = (z / k, k, z)
    return None if best is None else (best[1], best[2])


def client_dp_recipe(cfg: Any, builtin_app: bool = True) -> dict[str, dict[str, Any]]:
    """What ``--client-dp`` changes in ``cfg`` (only what the user left unset): dp_cnn for built-in
    images, the parties per round the budget favours (with ``--target-epsilon``), adaptive clipping
    in central mode where its count noise fits in the budget, FedAvgM with momentum 0.9, and
    balanced sampling for DP-FTRL."""
    p, f = cfg.privacy, cfg.federation
    if p.client_dp == "off":
        return {}
    chosen = _fill(cfg, CLIENT_DP_RECIPE)
    if not _unset(cfg.strategy, "name") and "strategy" in chosen:
        chosen.pop("strategy")
    privacy: dict[str, Any] = {}
    federation: dict[str, Any] = {}
    if p.client_dp == "ftrl" and _unset(f, "sampling"):
        federation["sampling"] = "balanced"
    calibrated = p.target_epsilon is not None and p.client_noise_multiplier is None and p.delta is not None
    choose_k = calibrated and f.parties_per_round is None and f.fraction is None
    from pollen.privacy.plan import client_noise

    secure_count = p.client_dp == "distributed" and client_noise(cfg) == "skellam"  # the count rides in the sum
    want_adaptive = (p.client_dp == "central" or secure_count) and _unset(p, "adaptive_clip")
    if choose_k:
        probe = make_config(merge(cfg.to_dict(), {"federation": federation}))
        best = best_parties_per_round(probe, adaptive=want_adaptive) if want_adaptive else None
        if best is None:
            want_adaptive = False
            best = best_parties_per_round(probe)
        if best is not None:
            federation["parties_per_round"] = best[0]
    elif want_adaptive:  # the user's k: adaptive only where its correction exists at that k
        from pollen.privacy.plan import client_noise_multiplier, sampling_plan

        plan = sampling_plan(cfg)
        sigma_b = p.clip_count_stddev if p.clip_count_stddev is not None else plan.per_round / 20
        try:
            want_adaptive = client_noise_multiplier(cfg, plan) < 2 * sigma_b
        except Exception:  # noqa: BLE001 - an impossible target is reported by check_config
            want_adaptive = False
    if want_adaptive:
        privacy["adaptive_clip"] = True
    extra = {k: v for k, v in (("privacy", privacy), ("federation", federation)) if v}
    return merge(merge(chosen, extra), _builtin_image_model(cfg, builtin_app))


def check_useful(cfg: Any, dim: int) -> None:
    """Refuse party-level DP whose noise would drown the signal, saying what federation would do.

    Over T rounds of k parties the noise on the summed mean updates has norm z·C·√(dT)/k against a
    signal of at most C·T; their ratio ``noise_to_signal`` falls as 1/N at a fixed sampling rate
    (z depends on k/N only), so N·ratio/limit parties would bring it to ``USEFUL_NOISE_TO_SIGNAL``.

    Raises:
        PrivacyError: the ratio is above ``USEFUL_NOISE_TO_SIGNAL``.
    """
    from pollen.errors import PrivacyError
    from pollen.privacy.plan import client_noise_multiplier, sampling_plan

    p = cfg.privacy
    if p.client_dp == "off" or p.target_epsilon is None or p.client_noise_multiplier is not None:
        return
    plan = sampling_plan(cfg)
    z = client_noise_multiplier(cfg, plan)
    if p.client_dp == "local":
        ratio = z * math.sqrt(dim) / (math.sqrt(plan.per_round) * math.sqrt(plan.rounds))
    else:
        ratio = noise_to_signal(z, plan.per_round, dim, plan.rounds)
    if ratio > USEFUL_NOISE_TO_SIGNAL:
        need = int(math.ceil(plan.parties * ratio / USEFUL_NOISE_TO_SIGNAL))
        raise PrivacyError(
            f"party-level DP at ε = {p.target_epsilon} with {plan.parties} parties ({plan.per_round} per round, "
            f"{plan.rounds} rounds, a {dim:,}-parameter model) would add noise {ratio:.1f}× the largest possible "
            f"signal: the model would not learn. It needs about {need:,} parties at the same sampling rate; or "
            f"raise --target-epsilon, use a smaller model, or set --client-noise-multiplier to run anyway")


def describe(changes: Mapping[str, Mapping[str, Any]]) -> str:
    """One line naming what a recipe set, e.g. ``train.lr=2.0, train.epochs=5``."""
    return ", ".join(f"{s}.{k}={v}" for s, values in changes.items() for k, v in values.items())


def noise_to_signal(z: float, parties: int, dim: int, rounds: int) -> float:
    """Noise norm over signal norm of the averaged clipped updates over a run: z·√d / (k·√T)."""
    return z * math.sqrt(dim) / (parties * math.sqrt(rounds))
