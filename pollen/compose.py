"""The composition root: the one place where a run is assembled (ARCHITECTURE.md).

Every mode calls :func:`assemble` with (RunConfig, app) — ``pollen simulate`` (inline and the
process pool's workers), ``pollen server``, each ``pollen client``, the benchmarks and
``pollen.simulate()`` — and gets an :class:`Assembly` that builds what that mode needs: the
strategy, the update pipeline (checked once, here), the models and trainers, the parties with
their explicit tables of task handlers, client hooks and durable state, the server-side
evaluator and the coordinator. :func:`open_run` and :func:`finish_run` write the run folder the
same way for every mode.

Nothing below this module assembles a run on its own; ``tests/test_compose.py`` fails if a mode
does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pollen.app import ROLE_PARTY, ROLE_SERVER, App, Context, call_user, load_app
from pollen.config import RunConfig, absolute_paths, make_config, merge, to_toml
from pollen.errors import ConfigError, RunError

log = logging.getLogger("pollen")

# Models are initialised from torch's global RNG: one model at a time, so that a seeded initial model
# is the same whatever other threads of the process (parties embedded in a program) build meanwhile.
_MODEL_LOCK = threading.RLock()
RUN_FILES = ("config.toml", "history.jsonl", "summary.json", "report.md", "plot.svg", "model.safetensors", "checkpoints",
             "ledgers", "party_state")  # --overwrite removes them all: a new run inherits no party's state


# ------------------------------------------------------------ threads
def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: every core), then put back the caller's setting:
    ``simulate()`` and friends are library calls and must not leave a process-wide setting changed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------ configuration
def settle(cfg: RunConfig, app: App) -> RunConfig:
    """``cfg`` with the app's config defaults under what the user set (file or flags).

    Precedence, lowest first: Pollen's defaults, the app's ``config``, then every field set in the
    TOML file, by flags or from Python.
    """
    if not app.config:
        return cfg
    explicit = {name: section.model_dump(include=section.model_fields_set)
                for name, section in cfg if section.model_fields_set}
    return make_config(merge(_deep(app.config), explicit))


def _deep(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def with_app(cfg: RunConfig, app: App) -> RunConfig:
    """``cfg`` recording the app's reference (what config.toml and the parties are told)."""
    if app.builtin or app.reference is None or cfg.app.path == app.reference:
        return cfg
    return make_config(merge(cfg.to_dict(), {"app": {"path": app.reference}}))


# What a resumed run may change: how long it runs and where and how it runs, never what it trains.
RESUMABLE: dict[str, set[str] | None] = {"federation": {"rounds", "round_timeout", "eval_every", "fed_eval_every",
                                                        "max_empty_rounds"},
                                         "run": {"progress", "device"}, "simulation": None, "network": None}


def resume_config(run_dir: Path, changes: Mapping[str, Any] | None = None) -> RunConfig:
    """The config of the run in ``run_dir`` with ``changes`` (flag-style like ``rounds=40``, or
    sections) applied: ``--resume RUN --rounds 40`` extends a finished run.

    Raises:
        RunError: ``run_dir`` holds no run.
        ConfigError: a change to what the run trains (data, model, strategy, privacy, …), or more
            rounds for a run whose DP noise was calibrated to its planned rounds.
    """
    from pollen.config import SECTIONS, flags_to_sections, load_toml

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise RunError(f"{run_dir} holds no run to resume (no config.toml); runs are written under runs/<name>/")
    stored = load_toml(path)
    changes = dict(changes or {})
    nested = changes if all(k in SECTIONS and isinstance(v, Mapping) for k, v in changes.items()) else flags_to_sections(changes)
    old = make_config(stored)
    refused = []
    for section, values in nested.items():
        allowed = RESUMABLE.get(section, set())
        for key, value in values.items():
            before = getattr(getattr(old, section), key)
            if allowed is not None and key not in allowed and value != before:
                refused.append(f"{section}.{key} ({before!r} → {value!r})")
    if refused:
        raise ConfigError("--resume continues a run with the settings it started with; these cannot change: "
                          + ", ".join(refused) + ". Start a new run instead (another --name)")
    new = make_config(merge(stored, nested))
    p = new.privacy
    if new.federation.rounds != old.federation.rounds and p.target_epsilon is not None and (p.dp_sgd or p.client_dp != "off"):
        raise ConfigError(f"this run's DP noise was calibrated so that {old.federation.rounds} rounds spend ε = "
                          f"{p.target_epsilon}; more rounds would spend more. Start a new run with the rounds you need")
    return new


# ------------------------------------------------------------ the tables
def party_tables(cfg: RunConfig) -> Any:
    """Task handlers, client hooks and durable state keys, built explicitly for this config."""
    from pollen.client.party import PartyTables
    from pollen.privacy.client_dp import PARTICIPATIONS_KEY
    from pollen.privacy.dpsgd import STATE_KEY as DP_SGD_KEY
    from pollen.strategy.ditto import DittoClient
    from pollen.strategy.pfedme import PFedMeClient
    from pollen.strategy.scaffold import ScaffoldClient

    handlers: dict[str, Any] = {}
    if cfg.privacy.secagg:
        from pollen.privacy.secagg.party import task_handlers

        handlers.update(task_handlers())
    if cfg.privacy.he:
        from pollen.privacy.he_step import task_handlers as he_handlers

        handlers.update(he_handlers())
    # Round secrets and signing keys never go to the party-state store (a simulated party evicted from
    # the pool's LRU comes back with a fresh pinned identity).
    return PartyTables(task_handlers=handlers, client_hooks={"scaffold": ScaffoldClient(), "pfedme": PFedMeClient(),
                                                             "ditto": DittoClient()},
                       durable_keys=frozenset({DP_SGD_KEY, PARTICIPATIONS_KEY}),
                       volatile_keys=frozenset({"secagg", "ckks_secret", "secagg_trust"}))


def build_pipeline(cfg: RunConfig, aggregator: Any, audit: Any = None) -> Any:
    """The update pipeline the config asks for, in the fixed order clip → noise → (audit) → compress →
    mask, checked once against itself and the aggregator (``pollen.transforms.check_pipeline``)."""
    from pollen.compression import steps_from_config as compression_steps
    from pollen.privacy import steps_from_config as privacy_steps
    from pollen.transforms.base import Pipeline, check_pipeline, empty_pipeline

    observe = []
    if audit is not None:
        from pollen.privacy.canaries import AuditObserver

        observe = [AuditObserver(audit)]
    steps = [*privacy_steps(cfg, "before_compress"), *observe, *compression_steps(cfg)]
    steps += privacy_steps(cfg, "after_compress", steps)
    pipeline = Pipeline(tuple(steps)) if steps else empty_pipeline()
    check_pipeline(pipeline, aggregator)
    return pipeline


def base_round_config(cfg: RunConfig) -> Any:
    """What every party is told before the strategy's schedules: ``[train]`` and DP-SGD's settings."""
    from pollen.privacy.plan import dp_sgd_extra
    from pollen.types import RoundConfig

    t = cfg.train
    return RoundConfig(epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, optimizer=t.optimizer,
                       momentum=t.momentum, weight_decay=t.weight_decay, extra=dp_sgd_extra(cfg))


def build_strategy(cfg: RunConfig) -> Any:
    """The configured strategy (sampler, client config, aggregator, server optimizer)."""
    from pollen.strategy import ClientConfig, build_strategy as named
    from pollen.strategy.registry import sampler_from_config

    return named(cfg, sampler_from_config(cfg), ClientConfig(base=base_round_config(cfg), lr_decay=cfg.train.lr_decay))


def _check_app(cfg: RunConfig, app: App, strategy: Any) -> None:
    if app.train is None:
        return
    needs = []
    if cfg.privacy.dp_sgd:
        needs.append("--dp-sgd (DP-SGD replaces the local loop)")
    probe = strategy.client.configure(1, None)  # before name filters (they need the real names)
    if probe.proximal_mu > 0:
        needs.append(f"strategy {cfg.strategy.name!r} (a proximal term in the loss)")
    if probe.extra.get("client_hooks"):
        needs.append(f"strategy {cfg.strategy.name!r} (a gradient correction)")
    if needs:
        raise ConfigError(f"your app's train() runs its own local loop, which cannot work with {' and '.join(needs)}; "
                          "drop train() from the app or choose fedavg, fedadam, …")


# ------------------------------------------------------------ the assembly
@dataclass
class Assembly:
    """Everything a mode needs for one run, built from (config, app) by :func:`assemble`.

    Attributes:
        cfg: the validated run configuration (app defaults settled in).
        app: the loaded app.
        strategy: sampler + client config + aggregator + server optimizer + name filter.
        pipeline: the update pipeline (checked).
        tables: the parties' task handlers, client hooks and durable state keys.
    """

    cfg: RunConfig
    app: App
    strategy: Any
    pipeline: Any
    tables: Any
    audit: Any = None  # the one-run privacy audit's canaries (pollen/privacy/canaries.py), when asked for
    _device: Any = field(default=None, init=False, repr=False)
    _server_data: Any = field(default=None, init=False, repr=False)
    _frozen: Any = field(default=None, init=False, repr=False)
    _frozen_digest: Any = field(default=None, init=False, repr=False)

    # -------------------------------------------------------- who and where
    @property
    def party_ids(self) -> Sequence[str]:
        """The simulated parties' ids, ``"0" … "N-1"`` (a sequence, not a list of N strings)."""
        from pollen.client.pool import PartyIds

        return PartyIds(self.cfg.data.parties)

    @property
    def device(self) -> Any:
        if self._device is None:
            from pollen.client.trainer import resolve_device

            self._device = resolve_device(self.cfg.run.device)
        return self._device

    def use_device(self, name: str | None) -> None:
        """Train on ``name`` instead of the configured device (a deployed party's own ``--device``)."""
        if name:
            from pollen.client.trainer import resolve_device

            self._device = resolve_device(name)

    def simulation_path(self, party_id: str) -> Path | None:
        """A simulated party's ``ctx.data_path``: ``--data-dir`` with ``{party}`` replaced."""
        d = self.cfg.data.data_dir
        if d is None:
            return None
        return Path(d.replace("{party}", party_id).replace("{party_id}", party_id)).expanduser()

    def context(self, party_id: str, role: str = ROLE_PARTY, data_path: str | Path | None = None) -> Context:
        """The ``ctx`` the app's functions get."""
        return Context(party_id=party_id, num_parties=self.cfg.data.parties,
                       data_path=None if data_path is None else Path(data_path), seed=self.cfg.run.seed,
                       device=self.device, role=role, config=self.cfg)

    # -------------------------------------------------------- models
    def new_model(self, ctx: Context | None = None) -> Any:
        """A fresh model from the app (BatchNorm → GroupNorm under DP-SGD, on every side alike)."""
        with _MODEL_LOCK:
            model = self.app.build_model(ctx or self.context("server", ROLE_SERVER))
        if self.cfg.privacy.dp_sgd:
            from pollen.privacy.dpsgd import make_private_model

            model = make_private_model(model)
        return model

    def initial_state(self) -> Any:
        """The global model at round 0: a fresh model built with torch's RNG seeded by the run seed."""
        import torch

        from pollen.client.trainer import digest_of, frozen_names, state_to_numpy

        with _MODEL_LOCK:
            torch.manual_seed(self.cfg.run.seed)
            model = self.new_model()
        state = state_to_numpy(model)
        self._frozen = frozen_names(model)
        self._frozen_digest = digest_of({k: state[k] for k in self._frozen})
        return state

    def frozen(self) -> tuple[tuple[str, ...], str | None]:
        """The model's frozen tensors (``requires_grad=False`` in ``model()``) and their digest: they
        never travel, each party builds them itself (a pre-trained base under adapters)."""
        if self._frozen is None:
            self.initial_state()
        return self._frozen, self._frozen_digest

    def trainer(self, model: Any = None, ctx: Context | None = None) -> Any:
        """A trainer with a fresh model (one per process, reused for every party there)."""
        from pollen.client.trainer import Trainer
        from pollen.models import get_augmentation

        app = self.app
        augment = app.augment or get_augmentation(self.cfg.model.augmentation)
        return Trainer(model if model is not None else self.new_model(ctx), augment, loss=app.loss,
                       metrics=app.metrics, device=self.device, app_train=app.train, app_evaluate=app.evaluate,
                       context=ctx or self.context("server", ROLE_SERVER))

    def model_signature(self, state: Mapping[str, np.ndarray]) -> list[list[Any]]:
        """``[[name, shape, dtype], …]`` of a model state: what a party's app must build too."""
        return [[k, list(v.shape), str(v.dtype)] for k, v in state.items()]

    # -------------------------------------------------------- parties
    def party_data(self, party_id: str, data_path: str | Path | None = None) -> Any:
        """A party's data from the app's ``load_data(ctx)``, with the held-out split cut when the
        app gives none (``--holdout``)."""
        from pollen.client.data import PartyData, party_data
        from pollen.client.party import party_index

        ctx = self.context(party_id, ROLE_PARTY, data_path)
        data, given = party_data(call_user(self.app.load_data, "load_data(ctx)", ctx), self.cfg.train.loader_workers)
        holdout = self.cfg.data.holdout
        if not given and holdout > 0 and hasattr(data.train, "split") and len(data.train) > 1:
            train, val = data.train.split(holdout, self.cfg.run.seed + party_index(party_id))
            data = PartyData(train, val)
        if self.audit is not None:  # canary records join this party's training data, half of them
            data = self.audit.add_records(party_id, data, self.num_classes(self.new_model()))
        return data

    def party(self, party_id: str, trainer: Any, data_path: str | Path | None = None, lazy: bool = True,
              strict: bool = False, ledger: Any = None) -> Any:
        """One ``LocalParty`` (its data loaded on first use when ``lazy``; ``strict``: an error in the
        app's code stops the run instead of failing the party's round; ``ledger``: its privacy ledger)."""
        from pollen.client.party import LocalParty

        load = lambda: self.party_data(party_id, data_path)  # noqa: E731
        return LocalParty(party_id, load if lazy else load(), trainer, seed=self.cfg.run.seed,
                          pipeline=self.pipeline, tables=self.tables, context=self.context(party_id, ROLE_PARTY, data_path),
                          strict=strict, ledger=ledger)

    def ledger(self, party_id: str, folder: str | Path | None, max_epsilon: float | None = None,
               delta: float | None = None) -> Any:
        """The party's privacy ledger in ``folder`` when parties spend privacy themselves (DP-SGD, local
        party-level DP), else None (``pollen.client.ledger``); ``max_epsilon``/``delta``: the party
        operator's own budget, which replaces the one the ledger pinned."""
        from pollen.client.ledger import Budget, Ledger, needs_ledger

        if folder is None or not needs_ledger(self.cfg):
            return None
        own = max_epsilon is not None or delta is not None
        return Ledger(folder, party_id, Budget.from_config(self.cfg, max_epsilon, delta), override=own)

    def parties(self, trainer: Any, ids: Iterable[str] | None = None, strict: bool = False,
                ledgers: str | Path | None = None) -> dict[str, Any]:
        """The simulated parties ``ids`` (all when None), each reading ``--data-dir`` with its id and
        keeping its privacy ledger in ``ledgers/party-<id>`` (when given and needed).

        With a simulated attack (``cfg.attack``) the malicious parties get a ``MaliciousTrainer``
        wrapping ``trainer``; every process that builds parties builds the same attackers, so the
        process-pool backend simulates them too.
        """
        trainer_of = self._attack_trainers(trainer)
        return {pid: self.party(pid, trainer_of(pid), self.simulation_path(pid), strict=strict,
                                ledger=self.ledger(pid, None if ledgers is None else Path(ledgers) / f"party-{pid}"))
                for pid in (ids if ids is not None else self.party_ids)}

    def party_pool(self, trainer: Any, ids: Sequence[str] | None = None, state_dir: str | Path | None = None,
                   resume_round: int | None = None, strict: bool = False, ledgers: str | Path | None = None) -> Any:
        """The simulated parties ``ids`` (all when None) as a :class:`~pollen.client.pool.PartyPool`:
        each built when a task first names it, at most ``--party-cache`` of them in memory, their
        state in a :class:`~pollen.client.state_store.PartyStateStore` under ``state_dir`` (None:
        in memory only). Every simulation backend holds one (inline, each worker, each Ray actor).
        A party that spends privacy keeps its ledger in ``ledgers/party-<id>`` (when given)."""
        from pollen.client.pool import PartyPool
        from pollen.client.state_store import PartyStateStore

        ids = ids if ids is not None else self.party_ids
        capacity = self.party_cache()
        store = PartyStateStore(state_dir, capacity, self.tables.volatile_keys, resume_round)
        trainer_of = self._attack_trainers(trainer)
        ledger = lambda pid: self.ledger(pid, None if ledgers is None else Path(ledgers) / f"party-{pid}")  # noqa: E731
        return PartyPool(ids, lambda pid: self.party(pid, trainer_of(pid), self.simulation_path(pid), strict=strict,
                                                     ledger=ledger(pid)), store, capacity)

    def party_cache(self) -> int:
        """Parties (data and state) a simulation keeps in memory: ``--party-cache``, by default
        four times the parties of a round and the federated evaluation, at least 256."""
        n = self.cfg.data.parties
        per_round = self.strategy.sampler.sample_size(n)
        spec = self.strategy.asynchronous
        if spec is not None:
            per_round = max(per_round, spec.in_flight(per_round))
        return self.cfg.simulation.party_cache or max(256, 4 * per_round, min(n, self.cfg.federation.fed_eval_parties))

    def _attack_trainers(self, trainer: Any) -> Callable[[str], Any]:
        """Each party's trainer: a simulated attacker's, a canary party's (a party-level privacy audit
        sends its secret direction), or ``trainer``."""
        trainer_of = self._malicious_trainers(trainer)
        if self.audit is None:
            return trainer_of
        from pollen.privacy.canaries import CanaryTrainer

        plan = self.audit
        return lambda pid: (trainer_of(pid) if plan.canary_slot(pid) is None
                            else CanaryTrainer(trainer_of(pid), plan, plan.canary_slot(pid)))

    def _malicious_trainers(self, trainer: Any) -> Callable[[str], Any]:
        from pollen.attacks import Collusion, MaliciousTrainer, select_malicious, spec_from_config

        spec = spec_from_config(self.cfg, self.num_classes(trainer.model))
        if spec is None:
            return lambda pid: trainer
        everyone = self.party_ids
        bad = select_malicious(everyone, self.cfg.attack.malicious_fraction, self.cfg.run.seed)
        sampler = self.strategy.sampler
        collusion = Collusion(bad, lambda p: self.party_data(p, self.simulation_path(p)).train.tensors(),
                              lambda r: sampler.select(r, everyone), seed=self.cfg.run.seed)
        return lambda pid: MaliciousTrainer(trainer, pid, spec, collusion) if pid in bad else trainer

    def num_classes(self, model: Any) -> int:
        """Classes of a classifier: the built-in dataset's, else the last linear layer's outputs."""
        import torch.nn as nn

        if self.app.builtin:
            from pollen.models.builtin import dataset

            return dataset(self.cfg).num_classes
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return last[-1].out_features if last else 2

    # -------------------------------------------------------- the coordinator side
    def server_data(self) -> Any:
        """The app's ``server_data(ctx)`` as a source (loaded once), or None when the app has none."""
        from pollen.client.data import party_data

        if self.app.server_data is None:
            return None
        if self._server_data is None:
            ctx = self.context("server", ROLE_SERVER)
            data, _ = party_data(call_user(self.app.server_data, "server_data(ctx)", ctx), self.cfg.train.loader_workers)
            self._server_data = data.train
        return self._server_data

    def evaluator(self, trainer: Any) -> Callable[[Any], Any] | None:
        """Evaluation of a global state on the app's ``server_data`` (None when it has none)."""
        data = self.server_data()
        if data is None:
            return None

        def evaluate(state: Any) -> Any:
            return trainer.evaluate(state, data)

        return evaluate

    def coordinator(self, transport: Any, events: Any = None, checkpointer: Any = None,
                    evaluate: Callable[[Any], Any] | None = None, control: Any = None) -> Any:
        """The coordinator that drives ``transport`` through the configured rounds (``control``: a
        ``pollen.server.control.Control`` whose commands it applies between rounds)."""
        from pollen.server.coordinator import Coordinator
        from pollen.telemetry.events import EventBus

        f = self.cfg.federation
        events = events if events is not None else EventBus()
        if control is not None:
            transport = control.bind(self.cfg, transport, events)
        strategy = self.strategy.with_frozen(*self.frozen())  # a frozen base never travels
        return Coordinator(strategy=strategy, transport=transport, rounds=f.rounds, pipeline=self.pipeline,
                           evaluate=evaluate, eval_every=f.eval_every,
                           fed_eval=self.cfg.data.holdout > 0 or not self.app.builtin,  # an app may hold out its own
                           fed_eval_every=f.fed_eval_every, fed_eval_parties=f.fed_eval_parties,
                           stream_aggregate=f.stream_aggregate,
                           min_fit_parties=f.min_fit_parties,
                           round_timeout=f.round_timeout, events=events if events is not None else EventBus(),
                           checkpointer=checkpointer, primary_metric=self.app.primary_metric[0], control=control,
                           max_empty_rounds=f.max_empty_rounds)


def assemble(cfg: RunConfig, app: Any = None, app_defaults: bool = True) -> Assembly:
    """Build a run from (config, app): the one builder every mode calls.

    Args:
        cfg: the run configuration.
        app: an app (path, module name, module or object; see ``pollen.app.load_app``), or None for
            the app named by ``cfg.app.path`` (the built-in datasets when that is unset too).
        app_defaults: settle the app's ``config`` defaults under ``cfg`` (False for a deployed
            party: the coordinator's config, sent when it joins, is the run's, whole).

    Raises:
        ConfigError: settings that cannot work together (all privacy problems listed at once), an
            app that cannot be loaded, or an app function that cannot run with the strategy.
    """
    from pollen.privacy.checks import check_config
    from pollen.privacy.recipe import apply_recipes

    loaded = load_app(app if app is not None else cfg.app.path)
    cfg = settle(cfg, loaded) if app_defaults else cfg
    cfg = with_app(apply_recipes(cfg, loaded.builtin), loaded)  # DP's recipes, where the user left a knob unset
    check_config(cfg)  # refuse combinations that cannot work before anything is loaded
    strategy = build_strategy(cfg)
    _check_app(cfg, loaded, strategy)
    assembly = Assembly(cfg, loaded, strategy, None, party_tables(cfg))
    if cfg.privacy.client_dp != "off":  # party-level DP whose noise would drown any signal is refused
        from pollen.privacy.recipe import check_useful

        check_useful(cfg, sum(p.numel() for p in assembly.new_model().parameters()))
    if cfg.privacy.audit_canaries > 0:
        from pollen.privacy.canaries import plan_audit

        assembly.audit = plan_audit(cfg, assembly.party_ids, assembly.new_model)
    assembly.pipeline = build_pipeline(cfg, strategy.aggregator, assembly.audit)
    if cfg.federation.stream_aggregate == "on":
        from pollen.server.streaming import can_stream

        why_not = can_stream(strategy.aggregator, assembly.pipeline, strategy.asynchronous)
        if why_not is not None:
            raise ConfigError(f"--stream-aggregate on cannot work here: {why_not}; use --stream-aggregate auto or off")
    return assembly


# ------------------------------------------------------------ run folders
def run_dir_for(cfg: RunConfig, app: App, kind: str = "") -> Path:
    """``<runs_dir>/<name>`` (a name from the app or dataset, split and time when none is set)."""
    from pollen.models.builtin import dataset_name

    what = f"{dataset_name(cfg)}-{cfg.data.partition}" if app.builtin else app.name  # an app reads its own files
    name = cfg.run.name or f"{what}{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.runs_dir) / name


@dataclass
class RunFolder:
    """An open run directory: where its history, checkpoints and results go.

    Attributes:
        path: ``runs/<name>``.
        events: the event bus (history file, progress display, the caller's callbacks).
        checkpointer: saves the state after every round.
        resume: the checkpoint the run continues from (None for a new run).
    """

    path: Path
    events: Any
    checkpointer: Any
    resume: Any = None


def open_run(assembly: Assembly, *, kind: str = "", run_dir: str | Path | None = None, resume: bool = False,
             overwrite: bool = False, callbacks: Sequence[Callable[[Any], None]] = (),
             party_state: Callable[[], Mapping[str, Any]] | None = None, title: str | None = None) -> RunFolder:
    """Create (or reopen, on resume) a run folder and its event bus.

    Args:
        assembly: the run.
        kind: a suffix of the generated name (``-grpc``, ``-centralized``).
        run_dir: the folder (default: ``<runs_dir>/<name>``).
        resume: continue the run in ``run_dir`` from its last checkpoint.
        overwrite: replace a finished or crashed run already in the folder.
        callbacks: functions of each event (``pollen.telemetry.events``), called in order.
        party_state: simulated parties' small durable state, saved in every checkpoint.
        title: the progress display's title (default: the folder's name).

    Raises:
        RunError: the folder holds another run and neither ``resume`` nor ``overwrite`` is set, or
            there is nothing to resume.
    """
    from pollen.server.checkpoint import Checkpointer
    from pollen.telemetry.events import EventBus, RunOpened
    from pollen.telemetry.history import HistorySink
    from pollen.telemetry.progress import ProgressSink

    path = Path(run_dir) if run_dir is not None else run_dir_for(assembly.cfg, assembly.app, kind)
    checkpointer = Checkpointer(path, party_state)
    point = None
    if resume:
        point = checkpointer.resume_point(assembly.pipeline)
    else:
        taken = [f for f in RUN_FILES if (path / f).exists()]
        if taken and not overwrite:
            raise RunError(f"{path} already holds a run ({', '.join(taken[:3])}); choose another --name, continue it "
                           f"with --resume {path}, or replace it with --overwrite")
        for f in taken:
            target = path / f
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.toml").write_text(to_toml(absolute_paths(assembly.cfg.to_dict())))
    bus = EventBus()
    bus.subscribe(HistorySink(path / "history.jsonl", point.start - 1 if point else None, point.record if point else None))
    if assembly.cfg.run.progress:
        bus.subscribe(ProgressSink(title=title or path.name, metric=assembly.app.primary_metric[0]))
    for cb in callbacks:
        bus.subscribe(cb)
    bus.emit(RunOpened(str(path), assembly.cfg.to_dict(), path.name))  # sinks learn where the run writes
    return RunFolder(path, bus, checkpointer, point)


def data_bytes(assembly: Assembly, parties: Mapping[str, Any] | None = None) -> int | None:
    """Bytes of the federation's training data (the denominator of communication / data): the
    built-in dataset's training set, or the in-memory data of the parties that were loaded."""
    if assembly.app.builtin:
        from pollen.models.builtin import dataset

        ds = dataset(assembly.cfg)
        return int(ds.x_train.nbytes + ds.y_train.nbytes)
    from pollen.client.data import Shard

    total = 0
    for party in (parties or {}).values():
        if getattr(party, "_data", None) is None or not isinstance(party._data.train, Shard):
            return None
        x, y = party._data.train.tensors()
        total += x.element_size() * x.numel() + y.element_size() * y.numel()
    return total or None


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path, dict[str, Any]] | None:
    """``(round, model file, meta)`` of a run's newest checkpoint that verifies against its manifest
    (``pollen.server.checkpoint``: ``checkpoints/round-<r>/``, or the older flat layout); None when
    there is none (the dashboard's model versions)."""
    from pollen.server.checkpoint import Checkpointer

    cp = Checkpointer(Path(run_dir))
    if not cp.exists():
        return None
    try:
        rnd, _, _, meta = cp.load()
    except RunError:  # none verifies (DamagedCheckpoint is a RunError too)
        return None
    return rnd, cp.model_file(rnd), meta


def finish_run(folder: RunFolder, assembly: Assembly, state: Mapping[str, np.ndarray], method: str,
               extra: Mapping[str, Any] | None = None, data_size: int | None = None,
               parties: Mapping[str, Any] | None = None) -> None:
    """Write the final model, summary.json and report.md (+ plot) of a run.

    Raises:
        RunError: no round aggregated anything (the history says why): the run failed.
    """
    from safetensors.numpy import save_file

    from pollen.telemetry.events import RunFinished
    from pollen.telemetry.history import read_history
    from pollen.telemetry.report import privacy_summary, write_report

    path = folder.path
    save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(path / "model.safetensors"))
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    app = assembly.app
    primary, higher = app.primary_metric
    summary.update(method=method, app=app.reference if not app.builtin else None,
                   app_name=None if app.builtin else app.name, parties=assembly.cfg.data.parties,
                   primary_metric=primary, higher_is_better=higher, data_bytes=data_size,
                   metric_names=list(app.metrics),
                   metric_notes={k: m.combine_note for k, m in app.metrics.items() if m.combine_note},
                   model=_model_spec(assembly, state, parties), **(extra or {}))
    history = read_history(path)
    privacy = privacy_summary(history)
    if privacy["privacy_unit"] is not None:
        summary["privacy"] = privacy  # unit, δ, accountant, worst ε, the audit's empirical bound
    if privacy["audit_violation"]:
        log.error("BUG: the one-run audit's lower bound ε ≥ %.3f exceeds the accountant's ε = %.3f (%s); see %s/report.md",
                  privacy["epsilon_empirical"], privacy["epsilon_max"], privacy["accountant"], path)
    summary_path.write_text(json.dumps(summary, indent=2))
    write_report(path)
    folder.events.emit(RunFinished(str(path), summary))  # the model and report exist now (tracking artifacts)
    if history and not any(r.get("aggregated", True) for r in history):
        reasons = sorted({str(r.get("reason", "?")) for r in history})
        raise RunError(f"no round aggregated an update ({'; '.join(reasons)[:500]}); see {path}/report.md and the "
                       "parties' failures above")


def _model_spec(assembly: Assembly, state: Mapping[str, np.ndarray], parties: Mapping[str, Any] | None) -> dict[str, Any]:
    """How ``pollen.load_model`` rebuilds the model without loading data, and one input's shape."""
    from pollen.client.data import Shard

    spec: dict[str, Any] = {"tensors": len(state), "parameters": int(sum(v.size for v in state.values()))}
    loaded = [p._data.train for p in (parties or {}).values() if getattr(p, "_data", None) is not None]
    source = next((s for s in [assembly._server_data, *loaded] if isinstance(s, Shard) and len(s)), None)
    if source is not None:
        x = source._x
        spec["input"] = {"shape": [1, *x.shape[1:]], "dtype": str(x.dtype).removeprefix("torch.")}
    if assembly.app.builtin:
        from pollen.models.builtin import model_name, shape_and_classes

        shape, classes = shape_and_classes(assembly.context("server", ROLE_SERVER))
        spec.update(builtin=model_name(assembly.cfg, shape), input_shape=list(shape), num_classes=classes,
                    dp_sgd=assembly.cfg.privacy.dp_sgd)
    return spec
