"""Federated hyper-parameter tuning: many short federated runs driven by Optuna.

Sampler: TPE (Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011).
Pruners on the per-round metric: successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm
Identification and Hyperparameter Optimization", AISTATS 2016; asynchronous form: Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) and Hyperband (Li et al.,
"Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018).

Every trial is one ordinary run, assembled by ``pollen.simulate`` (so by ``pollen.compose``) with the
trial's settings on top of the base configuration: any app, strategy, privacy setting and backend.
After each round the run's history record goes to Optuna (``trial.report``); when the pruner says
the trial is behind, the run is stopped through ``pollen.telemetry.events.StopRun`` and the trial
is recorded as pruned. The study lives in a SQLite file, so an interrupted tuning resumes: finished
trials are kept, a trial cut off mid-run is run again with the same parameters.

Privacy: each trial trains on the parties' data again. With DP on, a trial spends its own ε (read
from its history), and the tuning as a whole spends their sum (sequential composition of the
trials: ``total ε = Σ ε_i``, ``total δ = Σ δ_i``); ``max_epsilon`` stops launching trials before
the sum would pass a budget. docs/tuning.md explains the accounting and its caveats.
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollen.config import RunConfig, flags_to_sections, merge, to_toml
from pollen.errors import ConfigError, RunError, require
from pollen.telemetry.events import RoundCompleted, StopRun

log = logging.getLogger("pollen.tuning")
PRUNERS = ("hyperband", "halving", "median", "none")
STUDY_FILE = "study.db"


# ------------------------------------------------------------ the search space
@dataclass(frozen=True)
class Param:
    """One tuned setting.

    Attributes:
        name: a flag-style setting (``lr``, ``server_lr``, ``proximal_mu``) or ``section.key``.
        low: lower bound (numbers).
        high: upper bound (numbers).
        log: sample on a log scale.
        step: grid step (None: continuous floats, or every integer).
        choices: categorical values (instead of a range).
        integer: sample integers.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this setting."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)


def load_space(space: str | Path | Mapping[str, Any]) -> list[Param]:
    """The search space from a TOML file (or the same as a dict)::

        lr = { low = 0.001, high = 1.0, log = true }       # floats
        epochs = { low = 1, high = 5 }                       # integers: both bounds integers
        proximal_mu = { choices = [0.0, 0.001, 0.01, 0.1] }  # categorical
        [strategy]                                            # or section.key tables
        server_lr = { low = 0.001, high = 1.0, log = true }

    Raises:
        ConfigError: a missing file, a name that is no setting, or a bad range.
    """
    if isinstance(space, Mapping):
        data = dict(space)
        where = "search space"
    else:
        p = Path(space)
        if not p.is_file():
            raise ConfigError(f"search space file {p} does not exist (write e.g. 'lr = {{ low = 0.001, high = 1.0, log = true }}')")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        where = str(p)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and not _is_spec(value):  # a [section] of specs
            for sub, spec in value.items():
                flat[f"{key}.{sub}"] = spec
        else:
            flat[key] = value
    params = [_param(name, spec, where) for name, spec in flat.items()]
    if not params:
        raise ConfigError(f"{where}: no parameters to tune")
    flags_to_sections({p.name: 0 for p in params})  # every name must be a setting (close names suggested)
    return params


def _is_spec(value: Mapping[str, Any]) -> bool:
    return bool({"low", "high", "choices"} & set(value))


def _param(name: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: {name} = {spec!r}: expected {{ low = …, high = … }} or {{ choices = [ … ] }}")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where}: {name}: unknown keys {sorted(unknown)}; allowed: low, high, log, step, choices")
    if "choices" in spec:
        choices = tuple(spec["choices"])
        if not choices:
            raise ConfigError(f"{where}: {name}: choices is empty")
        return Param(name, choices=choices)
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: {name}: needs numbers low < high (got low={low!r}, high={high!r})")
    log_scale = bool(spec.get("log", False))
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: {name}: a log scale needs low > 0 (got {low})")
    integer = isinstance(low, int) and isinstance(high, int) and not isinstance(spec.get("step"), float)
    return Param(name, float(low), float(high), log_scale, spec.get("step"), None, integer)


# ------------------------------------------------------------ results
@dataclass
class TrialResult:
    """One trial as the study recorded it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING
    params: dict[str, Any]
    value: float | None
    rounds: int
    epsilon: float | None
    delta: float | None
    run_dir: str | None


@dataclass
class TuneResult:
    """What a tuning left behind.

    Attributes:
        out_dir: the tuning folder (``study.db``, ``results.md``, ``trials.csv``, ``plot.png``, ``best.toml``, ``runs/``).
        best_params: the best completed trial's settings.
        best_value: its objective.
        trials: every trial.
        total_epsilon: the ε all trials spent together (None without DP).
    """

    out_dir: Path
    best_params: dict[str, Any]
    best_value: float | None
    trials: list[TrialResult] = field(default_factory=list)
    total_epsilon: float | None = None
    total_delta: float | None = None


# ------------------------------------------------------------ the tuner
def _optuna() -> Any:
    return require("optuna", "tune", "pollen tune (federated hyper-parameter tuning)")


def make_pruner(name: str, rounds: int, min_rounds: int = 1, reduction: int = 3) -> Any:
    """An Optuna pruner over rounds: ``hyperband``, ``halving`` (successive halving), ``median`` or ``none``.

    Raises:
        ConfigError: an unknown name.
    """
    optuna = _optuna()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_rounds, max_resource=rounds, reduction_factor=reduction)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_rounds, reduction_factor=reduction)
    if name == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=min_rounds)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


class _Reporter:
    """A run callback: hands each round's metric to the trial, stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def __call__(self, event: Any) -> None:
        if not isinstance(event, RoundCompleted):
            return
        value = objective_value(event.record, self.metric)
        if value is None:
            return
        self.trial.report(value, event.round)
        if self.trial.should_prune():
            self.pruned_at = event.round
            raise StopRun(f"trial {self.trial.number} pruned after round {event.round}")


def objective_value(record: Mapping[str, Any], metric: str) -> float | None:
    """The metric of one history record: the coordinator's value, else the parties' (``fed_<metric>``)."""
    for key in (metric, f"fed_{metric}"):
        v = record.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return None


def tune(config: RunConfig | Mapping[str, Any] | str | Path | None = None, *, space: Any, trials: int,
         app: Any = None, out_dir: str | Path | None = None, metric: str | None = None,
         direction: str | None = None, pruner: str = "hyperband", min_rounds: int = 1, seed: int = 0,
         max_epsilon: float | None = None, callbacks: Sequence[Callable[[Any], None]] = (),
         on_trial: Callable[[TrialResult], None] | None = None, **overrides: Any) -> TuneResult:
    """Tune a federation's hyper-parameters with ``trials`` short runs (resumes a study in ``out_dir``).

    ::

        pollen.tuning.tune({"data": {"dataset": "digits", "parties": 5}}, rounds=5,
                           space={"lr": {"low": 1e-3, "high": 1.0, "log": True}}, trials=8)

    Args:
        config: the base configuration (a RunConfig, nested dict, TOML path or None); trials add
            their settings on top.
        space: the search space (TOML path or dict; see :func:`load_space`).
        trials: trials the study should hold in the end (finished, pruned or failed); a resumed
            study runs only the rest.
        app: the app (as for ``pollen.simulate``).
        out_dir: the tuning folder (default ``<runs_dir>/tune-<run name or app>``); it holds the
            study, so the same folder resumes it.
        metric: the objective, a history key (default: the app's primary metric); the
            coordinator's value, else the parties' held-out ``fed_<metric>``.
        direction: ``maximize`` or ``minimize`` (default: from the metric).
        pruner: ``hyperband``, ``halving``, ``median`` or ``none``.
        min_rounds: rounds every trial runs before it can be pruned.
        seed: the TPE sampler's seed.
        max_epsilon: a total privacy budget: no trial starts once the ε spent plus one more
            trial's would exceed it.
        callbacks: run callbacks passed to every trial's ``pollen.simulate``.
        on_trial: called with each finished trial.
        **overrides: flag-style settings of the base configuration (``rounds=5``, ``parties=10``).

    Raises:
        ConfigError: a bad space, metric or pruner.
        KeyboardInterrupt: the tuning was interrupted (the study is saved; run it again to resume).
    """
    optuna = _optuna()
    from pollen.app import load_app
    from pollen.simulation.run import resolve_config

    base = resolve_config(config, overrides)
    params = load_space(space)
    loaded = load_app(app if app is not None else base.app.path)
    primary, higher = loaded.primary_metric
    metric = metric or primary
    if direction is None:
        better_high = higher if metric == primary else "loss" not in metric
        direction = "maximize" if better_high else "minimize"
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction must be maximize or minimize, got {direction!r}")
    rounds = base.federation.rounds
    out = Path(out_dir) if out_dir is not None else Path(base.run.runs_dir) / f"tune-{base.run.name or loaded.name}"
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    study = optuna.create_study(study_name="pollen", storage=storage, load_if_exists=True, direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, max(trials // 2, 1))),
                                pruner=make_pruner(pruner, rounds, min_rounds))
    _check_same_study(study, out, {"space": [p.name for p in params], "metric": metric, "direction": direction})
    _requeue_interrupted(study)
    app_arg = app if app is not None else base.app.path
    while True:
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get("interrupted")]
        if len(done) >= trials:
            break
        spent = _spent(study)
        if max_epsilon is not None and spent[0] is not None and base.privacy.target_epsilon is not None \
                and spent[0] + base.privacy.target_epsilon > max_epsilon + 1e-12:
            log.warning("stopping: ε spent %.3g + one more trial's %.3g would exceed --max-epsilon %.3g",
                        spent[0], base.privacy.target_epsilon, max_epsilon)
            break
        trial = study.ask()
        result = _run_trial(optuna, study, trial, params, base, app_arg, out, metric, callbacks)
        if on_trial is not None:
            on_trial(result)
    return write_results(study, out, base, metric)


def _run_trial(optuna: Any, study: Any, trial: Any, params: Sequence[Param], base: RunConfig, app: Any, out: Path,
               metric: str, callbacks: Sequence[Callable[[Any], None]]) -> TrialResult:
    from pollen.simulation.run import resolve_config, simulate

    values = {p.name: p.suggest(trial) for p in params}
    name = f"trial-{trial.number:03d}"
    run_dir = out / "runs" / name
    trial.set_user_attr("run_dir", str(run_dir))
    cfg = resolve_config(base, {**values, "name": name, "runs_dir": str(out / "runs"), "progress": False})
    reporter = _Reporter(trial, metric)
    log.info("trial %d: %s", trial.number, values)
    try:
        result = simulate(cfg, app=app, overwrite=True, callbacks=[reporter, *callbacks])
        history = result.history
    except StopRun:
        history = _history(run_dir)
        _record_privacy(trial, history, cfg)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return _result(study, trial.number)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)  # a resumed study runs these parameters again
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except (ConfigError, RunError) as exc:  # settings that cannot work: a failed trial, the study goes on
        log.warning("trial %d failed: %s", trial.number, exc)
        trial.set_user_attr("error", str(exc)[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return _result(study, trial.number)
    _record_privacy(trial, history, cfg)
    value = next((v for r in reversed(history) if (v := objective_value(r, metric)) is not None), None)
    if value is None:
        trial.set_user_attr("error", f"the runs' history has no {metric!r} (nor fed_{metric})")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)
    return _result(study, trial.number)


def _requeue_interrupted(study: Any) -> None:
    """A trial left RUNNING (the process was killed) or failed by an interruption is failed and
    its parameters queued again: a resumed study repeats the cut-off trial instead of losing it."""
    optuna = _optuna()
    done = set(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=False):
        if t.number in done:
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # noqa: SLF001 - no public API for this
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001
        elif not (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        study.enqueue_trial(t.params, user_attrs={"repeats": t.number})
        done.add(t.number)
        log.info("trial %d was cut off: its parameters run again", t.number)
    study.set_user_attr("requeued", sorted(done))


def _check_same_study(study: Any, out: Path, what: dict[str, Any]) -> None:
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", what)
    elif stored != what:
        raise ConfigError(f"{out} holds a study of another search ({stored}); this one is {what}: use another "
                          "--out folder, or delete the old study")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from pollen.telemetry.history import read_history

    try:
        return read_history(run_dir)
    except RunError:
        return []


def _record_privacy(trial: Any, history: list[dict[str, Any]], cfg: RunConfig) -> None:
    eps = next((r["epsilon"] for r in reversed(history) if isinstance(r.get("epsilon"), (int, float))), None)
    trial.set_user_attr("rounds", len(history))
    if eps is not None:
        trial.set_user_attr("epsilon", float(eps))
        trial.set_user_attr("delta", cfg.privacy.delta)


def _spent(study: Any) -> tuple[float | None, float | None]:
    """(Σ ε, Σ δ) over the study's trials that ran (None when no trial recorded an ε)."""
    eps = [t.user_attrs["epsilon"] for t in study.get_trials(deepcopy=False) if "epsilon" in t.user_attrs]
    deltas = [t.user_attrs.get("delta") or 0.0 for t in study.get_trials(deepcopy=False) if "epsilon" in t.user_attrs]
    return (sum(eps), sum(deltas)) if eps else (None, None)


def _result(study: Any, number: int) -> TrialResult:
    t = study.get_trials(deepcopy=False)[number]
    a = t.user_attrs
    return TrialResult(t.number, t.state.name, dict(t.params), t.value, int(a.get("rounds", 0)), a.get("epsilon"),
                       a.get("delta"), a.get("run_dir"))


# ------------------------------------------------------------ the outputs
def write_results(study: Any, out: Path, base: RunConfig, metric: str) -> TuneResult:
    """``results.md`` (table), ``trials.csv``, ``plot.png`` and ``best.toml`` (a runnable config) in ``out``.

    Raises:
        RunError: no trial completed.
    """
    trials = [_result(study, t.number) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in trials if t.state == "COMPLETE"]
    eps, delta = _spent(study)
    best: TrialResult | None = None
    if complete:
        pick = max if study.direction.name == "MAXIMIZE" else min
        best = pick(complete, key=lambda t: t.value)
    names = sorted({k for t in trials for k in t.params})
    head = ["trial", *names, metric, "state", "rounds", "ε"]
    lines = [f"# Tuning: {len(trials)} trials, objective {metric} ({study.direction.name.lower()})", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t in trials:
        mark = " **(best)**" if best is not None and t.number == best.number else ""
        cells = [f"{t.number}{mark}", *(_fmt(t.params.get(n)) for n in names), _fmt(t.value), t.state.lower(),
                 str(t.rounds), _fmt(t.epsilon)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if eps is not None:
        lines.append(f"Privacy: the trials together spent ε = {eps:.3g} (δ = {delta:.3g}) on the parties' data "
                     "(sequential composition: the sum over trials; docs/tuning.md).")
    if best is not None:
        lines.append(f"Best: trial {best.number}, {metric} = {_fmt(best.value)} with {best.params}; "
                     f"run it with `pollen simulate --config {out / 'best.toml'}`.")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with (out / "trials.csv").open("w") as f:
        f.write(",".join(["trial", *names, metric, "state", "rounds", "epsilon"]) + "\n")
        for t in trials:
            f.write(",".join(str(x) for x in [t.number, *(t.params.get(n, "") for n in names),
                                             "" if t.value is None else t.value, t.state, t.rounds,
                                             "" if t.epsilon is None else t.epsilon]) + "\n")
    if best is not None:
        data = best_settings(base, best.params)
        data.setdefault("run", {})["name"] = f"{out.name}-best"
        data["run"].pop("progress", None)
        (out / "best.toml").write_text(f"# best of {len(trials)} trials ({metric} = {_fmt(best.value)}): pollen simulate "
                                       f"--config {out / 'best.toml'}\n" + to_toml(data))
    _plot(study, trials, out, metric)
    (out / "summary.json").write_text(json.dumps({
        "metric": metric, "direction": study.direction.name.lower(), "trials": len(trials),
        "complete": len(complete), "pruned": sum(t.state == "PRUNED" for t in trials),
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
        "total_epsilon": eps, "total_delta": delta}, indent=2))
    if best is None:
        raise RunError(f"no trial of the study in {out} completed (see {out / 'results.md'})")
    return TuneResult(out, best.params, best.value, trials, eps, delta)


def best_settings(base: RunConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """What ``best.toml`` holds: the settings the base configuration set, with the trial's on top
    (checked to make a valid ``RunConfig``; defaults are left out)."""
    from pollen.config import make_config

    explicit = {name: section.model_dump(include=section.model_fields_set, exclude_none=True) for name, section in base
                if section.model_fields_set}
    data = merge(explicit, flags_to_sections(dict(params)))
    make_config(data)
    return {k: v for k, v in data.items() if v}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _plot(study: Any, trials: list[TrialResult], out: Path, metric: str) -> None:
    """Objective per trial with the best so far, and each trial's metric per round."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("plot skipped: install matplotlib with pip install 'pollen-fl[plot]'")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    maximize = study.direction.name == "MAXIMIZE"
    best, xs, ys, bests = None, [], [], []
    for t in trials:
        if t.state != "COMPLETE":
            continue
        best = t.value if best is None else (max if maximize else min)(best, t.value)
        xs.append(t.number)
        ys.append(t.value)
        bests.append(best)
    a.plot(xs, ys, "o", label="trial")
    a.step(xs, bests, where="post", label="best so far")
    pruned = [t.number for t in trials if t.state == "PRUNED"]
    if pruned:
        a.plot(pruned, [min(ys or [0])] * len(pruned), "x", color="gray", label="pruned")
    a.set_xlabel("trial")
    a.set_ylabel(metric)
    a.legend()
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        if steps:
            b.plot(steps, [t.intermediate_values[s] for s in steps], color="C0" if t.state.name == "COMPLETE" else "gray",
                   alpha=0.8 if t.state.name == "COMPLETE" else 0.4)
    b.set_xlabel("round")
    b.set_ylabel(metric)
    b.set_title("per round (grey: pruned)")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
    plt.close(fig)
