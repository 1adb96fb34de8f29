"""Attacks on a finished run (``pollen attack membership|inversion --run runs/<name>``).

Membership: candidates are records of the parties' training shards (members) and of the test
set (non-members); the LiRA attacker holds data from the same distribution that contains no
candidate (the other half of the test set and the training records not drawn as candidates) and
trains its shadow models with the run's model and local recipe, centrally.

Inversion: the coordinator's view of one party's first-round update (one SGD step on one batch
from the run's initial model), with no protection, with the party's local DP noise, or inside
a sum of several parties' updates (what secure aggregation or HE leave visible).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load_file

from pollen.attacks import inversion, membership
from pollen.client.trainer import Trainer, load_numpy_state
from pollen.config import RunConfig, load_toml, make_config
from pollen.errors import ConfigError, RunError
from pollen.telemetry.history import read_history
from pollen.types import ModelState, RoundConfig


@dataclass
class LoadedRun:
    """A run directory's configuration, assembly (``pollen.compose``) and final model."""

    run_dir: Path
    cfg: RunConfig
    assembly: Any
    final: ModelState
    history: list[dict[str, Any]]

    @property
    def dataset(self) -> Any:
        """The built-in dataset the run trained on."""
        from pollen.models.builtin import dataset

        return dataset(self.cfg)

    @property
    def party_ids(self) -> list[str]:
        return self.assembly.party_ids

    def party_train(self, pid: str) -> Any:
        """A party's training shard."""
        return self.assembly.party_data(pid).train

    @classmethod
    def load(cls, run_dir: str | Path) -> "LoadedRun":
        """Read ``config.toml``, ``model.safetensors`` and ``history.jsonl``.

        Raises:
            RunError: not a finished run directory.
        """
        d = Path(run_dir)
        if not (d / "model.safetensors").is_file():
            raise RunError(f"{d} has no model.safetensors: is it a finished run directory (runs/<name>)?")
        from pollen.compose import assemble

        cfg = make_config(load_toml(d / "config.toml"))
        assembly = assemble(cfg)
        if not assembly.app.builtin:
            raise ConfigError(f"the attacks draw members and non-members from a built-in dataset's train and test "
                              f"splits; {d} ran the app {assembly.app.reference}")
        return cls(d, assembly.cfg, assembly, load_file(str(d / "model.safetensors")), read_history(d))

    def model(self, state: ModelState | None = None) -> torch.nn.Module:
        """The run's architecture holding ``state`` (the final model by default)."""
        m = self.assembly.new_model()
        load_numpy_state(m, state if state is not None else self.final)
        return m

    def member_indices(self) -> np.ndarray:
        """Indices (into the training set) of every record some party trained on."""
        return np.concatenate([self.party_train(pid).index.numpy() for pid in self.party_ids])

    def privacy_spent(self) -> tuple[float, float] | None:
        """(ε, δ) of the run from its history and config (None when it ran without DP)."""
        eps = [r["epsilon"] for r in self.history if isinstance(r.get("epsilon"), (int, float))]
        delta = getattr(self.cfg.privacy, "delta", None)
        return (float(eps[-1]), float(delta or 0.0)) if eps else None


def shadow_trainer(run: LoadedRun, epochs: int):
    """``(x, y, seed) -> model``: the run's model trained centrally with its local recipe."""
    t = run.cfg.train
    config = RoundConfig(epochs=epochs, lr=t.lr, batch_size=t.batch_size, optimizer=t.optimizer,
                         momentum=t.momentum, weight_decay=t.weight_decay)

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = run.assembly.new_model()
        start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        Trainer(model).fit(start, (x, y), config, torch.Generator().manual_seed(seed))
        return model

    return train


def target_epochs(cfg: RunConfig) -> float:
    """Passes the target model made over an average training record: rounds · epochs · sampled fraction."""
    from pollen.strategy.registry import sampler_from_config

    frac = sampler_from_config(cfg).sample_size(cfg.data.parties) / cfg.data.parties
    return cfg.federation.rounds * cfg.train.epochs * frac


def attack_membership(run: LoadedRun, candidates: int = 1000, shadows: int = 4, shadow_epochs: int | None = None,
                      bootstrap: int = 200, fpr_target: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Loss-threshold and offline-LiRA attacks on the run's final model; metrics and DP check."""
    rng = np.random.default_rng(seed)
    ds = run.dataset
    members = rng.permutation(run.member_indices())
    test = rng.permutation(len(ds.y_test))
    m = min(candidates, len(members), len(test) // 2)
    if m < 10:
        raise ConfigError(f"too few records for a membership attack: {m} candidates of each kind (need ≥ 10)")
    x_tr, y_tr = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    x_te, y_te = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    mem, non = torch.from_numpy(members[:m]), torch.from_numpy(test[:m])
    x = torch.cat([x_tr[mem], x_te[non]])
    y = torch.cat([y_tr[mem], y_te[non]])
    spare_train = np.setdiff1d(np.arange(len(y_tr)), members[:m])
    sx = torch.cat([x_tr[torch.from_numpy(spare_train)], x_te[torch.from_numpy(test[m:])]])
    sy = torch.cat([y_tr[torch.from_numpy(spare_train)], y_te[torch.from_numpy(test[m:])]])
    epochs = shadow_epochs or max(1, min(10, round(target_epochs(run.cfg))))
    target = run.model()
    scores = {"loss_threshold": membership.loss_threshold_scores(target, x, y)}
    if shadows > 0:
        scores["lira_offline"] = membership.lira_offline_scores(target, x, y, sx, sy, shadow_trainer(run, epochs), shadows, rng)
    out: dict[str, Any] = {"candidates_per_side": m, "fpr_target": fpr_target, "bootstrap": bootstrap,
                           "shadows": shadows, "shadow_epochs": epochs, "shadow_data": int(len(sy)), "attacks": {}}
    spent = run.privacy_spent()
    out["privacy"] = {"epsilon": spent[0], "delta": spent[1]} if spent else None
    for name, s in scores.items():
        res = membership.evaluate_scores(name, s[:m], s[m:], rng, fpr_target, bootstrap)
        entry = {"auc": vars(res.auc), "tpr_at_fpr": vars(res.tpr_low_fpr)}
        if spent:
            entry["dp_bound"] = vars(membership.check_dp_bound(res.fpr, res.tpr, *spent))
        out["attacks"][name] = entry
    return out


Protection = Literal["none", "dp", "sum"]


def attack_inversion(run: LoadedRun, party: str = "0", batch: int = 1, steps: int = 500, protection: Protection = "none",
                     noise_multiplier: float = 1.0, clip_norm: float | None = None, sum_of: int = 10,
                     seed: int = 0) -> dict[str, Any]:
    """Invert party ``party``'s update (one SGD step on ``batch`` records from the initial model)."""
    if party not in run.party_ids:
        raise ConfigError(f"party {party!r} is not in this run; parties are 0 … {len(run.party_ids) - 1}")
    ds, t = run.dataset, run.cfg.train
    start = run.assembly.initial_state()
    model = run.model(start)
    names = [n for n, _ in model.named_parameters()]
    config = RoundConfig(lr=t.lr, batch_size=batch, epochs=1)

    def update_of(pid: str) -> tuple[ModelState, torch.Tensor, torch.Tensor]:
        x, y = run.party_train(pid).tensors()
        x, y = x[:batch], y[:batch]
        u = Trainer(run.model(start)).fit(start, (x, y), config, torch.Generator().manual_seed(seed))
        return u.delta, x, y

    delta, x, y = update_of(party)
    knowledge = ["global model", "architecture", f"local lr {t.lr}", "one SGD step on one batch", f"batch size {batch}"]
    if protection == "dp":
        flat = np.sqrt(sum(float((delta[n] ** 2).sum()) for n in names))
        c = clip_norm or flat
        scale = min(1.0, c / max(flat, 1e-12))
        noise = np.random.default_rng(seed)  # attack simulation, not a protection: seeded on purpose
        delta = {n: (delta[n] * scale + noise.normal(0, noise_multiplier * c, delta[n].shape)).astype(np.float32) for n in names}
        knowledge.append(f"the update carries local DP noise (clip {c:.3g}, σ={noise_multiplier})")
    elif protection == "sum":
        others = [p for p in run.party_ids if p != party][: max(sum_of - 1, 0)]
        for pid in others:
            d2, _, _ = update_of(pid)
            delta = {n: delta[n] + d2[n] for n in names}
        knowledge.append(f"only the sum of {len(others) + 1} parties' updates (secure aggregation / HE)")
    target = inversion.observed_gradient(delta, t.lr, names)
    params = {n: torch.from_numpy(start[n]) for n in names}
    labels = None if batch == 1 else y
    knowledge.append("labels inferred from the gradient (iDLG)" if labels is None else "the batch's labels")
    rec = inversion.invert_gradient(model, params, target, tuple(ds.input_shape), batch, labels, steps,
                                    torch.Generator().manual_seed(seed))
    data_range = float(ds.x_train.max() - ds.x_train.min())
    return {"protection": protection, "party": party, "batch": batch, "steps": steps,
            "psnr_db": inversion.best_match_psnr(rec.images.clamp(float(ds.x_train.min()), float(ds.x_train.max())), x, data_range),
            "label_correct": float((rec.labels == y).float().mean()), "gradient_distance": rec.gradient_distance,
            "attacker_knows": knowledge, "images": rec.images, "truth": x}


def write_result(run_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Save an attack's figures as ``<run>/attacks/<name>.json`` (tensors dropped)."""
    out = run_dir / "attacks"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    clean = {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}
    path.write_text(json.dumps(clean, indent=2, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)))
    return path
