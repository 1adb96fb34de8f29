"""``pollen simulate`` and ``pollen centralized``: run a federation of virtual parties on one
machine (or the pooled-data baseline) and write its run folder (config, history, model, report,
plot, summary). Both are assembled by ``pollen.compose``, like every other mode."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollen.compose import (Assembly, RunFolder, assemble, cores, data_bytes, finish_run, open_run, torch_threads)
from pollen.config import RunConfig
from pollen.errors import ConfigError, RunError
from pollen.types import ModelState

log = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: every finished round is saved in ``run_dir`` (continue with ``--resume``)."""

    def __init__(self, run_dir: Path, signum: int | None = None) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.signum = signum  # the signal that stopped it (SIGTERM), None for Ctrl-C


@dataclass
class RunResult:
    """What a finished run left behind.

    Attributes:
        run_dir: the run folder (``runs/<name>``).
        state: the final global model as numpy arrays.
        history: one record per round (as in ``history.jsonl``).
    """

    run_dir: Path
    state: ModelState
    history: list[dict[str, Any]]

    def model(self) -> Any:
        """The trained ``nn.Module`` (``pollen.load_model(run_dir)``)."""
        from pollen.export import load_model

        return load_model(self.run_dir)


def resolve_config(config: Any = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A ``RunConfig`` from what Python callers pass: a RunConfig, a nested dict, a TOML path or
    None, plus flag-style overrides (``rounds=10``, ``parties=3``, ``dp_sgd=True``).

    Raises:
        ConfigError: an unknown override name (the message lists the close ones) or a bad value.
    """
    from pollen.config import flags_to_sections, load_toml, make_config, merge

    if isinstance(config, RunConfig):
        if not overrides:
            return config
        base = {name: section.model_dump(include=section.model_fields_set) for name, section in config
                if section.model_fields_set}
    elif isinstance(config, (str, Path)):
        base = load_toml(config)
    else:
        base = dict(config or {})
    return make_config(merge(base, flags_to_sections(overrides or {})))


def simulate(config: Any = None, *, app: Any = None, resume: str | Path | None = None, overwrite: bool = False,
             callbacks: Sequence[Callable[[Any], None]] = (), control: Any = None, **overrides: Any) -> RunResult:
    """Run a federated simulation and write its run folder.

    ::

        pollen.simulate(app="app.py", parties=3, rounds=10)
        pollen.simulate({"data": {"dataset": "digits", "parties": 5}}, rounds=10, callbacks=[print])

    Args:
        config: a ``RunConfig``, a nested dict like a TOML file, a TOML file's path, or None.
        app: the app (a ``.py`` path, module name, module or object); None: ``config``'s
            ``[app] path``, or the built-in datasets.
        resume: a run folder to continue from its last checkpoint (its config.toml is used when
            ``config`` is None; ``rounds=`` may extend a finished run).
        overwrite: replace a run already in the folder ``--name`` points to.
        callbacks: functions called with every event of the run (``pollen.RoundCompleted``, …).
        control: a ``pollen.server.control.Control`` to pause, stop or reconfigure the run between
            rounds (the dashboard's control API).
        **overrides: flag-style settings (``rounds=10``, ``parties_per_round=5``, ``lr=0.1``).

    Raises:
        RunInterrupted: Ctrl-C (a ``KeyboardInterrupt`` carrying the run folder).
    """
    if resume is not None and config is None:
        from pollen.compose import resume_config

        cfg = resume_config(Path(resume), overrides)
    else:
        cfg = resolve_config(config, overrides)
    assembly = assemble(cfg, app)
    with torch_threads(assembly.cfg.simulation.threads):
        return _simulate(assembly, None if resume is None else Path(resume), overwrite, callbacks, control)


def _simulate(assembly: Assembly, resume: Path | None, overwrite: bool,
              callbacks: Sequence[Callable[[Any], None]], control: Any = None) -> RunResult:
    from pollen.simulation.clock import with_simulated_clock
    from pollen.transport.base import Transport
    from pollen.transport.inprocess import InProcessTransport

    cfg = assembly.cfg
    backend = cfg.simulation.backend
    if backend != "inline" and assembly.app.reference is None:
        raise ConfigError(f"the {backend} backend starts fresh Python processes, which import your app by name: give "
                          "the app as a .py file or a module name (or use --backend inline)")
    if backend == "ray":  # before the run folder is made: a missing extra leaves nothing behind
        from pollen.simulation.ray_backend import require_ray

        require_ray()
    trainer = assembly.trainer()
    folder = open_run(assembly, run_dir=resume, resume=resume is not None, overwrite=overwrite, callbacks=callbacks)
    state, start, opt_state = _starting_point(assembly, folder)
    # Parties' state (control variates, residuals, private layers) lives on disk in the run folder,
    # an LRU of it in memory: every backend reads and writes the same store. A party that spends
    # privacy keeps its own ledger besides (pollen.client.ledger), which wins over the store.
    state_dir, resume_round = folder.path / "party_state", (start if folder.resume is not None else None)
    ledgers = folder.path / "ledgers"  # one privacy ledger per party that spends privacy
    parties = None
    transport: Transport
    if backend == "inline":
        parties = assembly.party_pool(trainer, state_dir=state_dir, resume_round=resume_round, strict=True,
                                      ledgers=ledgers)
        _restore_old_checkpoint(folder, parties)
        transport = InProcessTransport(parties)
    elif backend == "process":
        from pollen.simulation.process_pool import ProcessPoolTransport

        transport = ProcessPoolTransport(assembly, cfg.simulation.workers or cores(), cfg.simulation.threads or 1,
                                         state_dir=state_dir, resume_round=resume_round, ledgers=ledgers)
    else:
        from pollen.simulation.ray_backend import RayTransport

        transport = RayTransport(assembly, folder.path, state_dir=state_dir, resume_round=resume_round, ledgers=ledgers)
    transport = with_simulated_clock(transport, cfg)  # --party-speed / --dropout: virtual time
    coordinator = assembly.coordinator(transport, folder.events, folder.checkpointer, assembly.evaluator(trainer),
                                       control=control)
    try:
        with transport:
            state = coordinator.run(state, start_round=start, optimizer_state=opt_state)
    except KeyboardInterrupt:
        raise RunInterrupted(folder.path) from None
    loaded = parties.loaded() if parties is not None else None
    from pollen.attacks import describe_attack  # simulated malicious parties, if any, go in summary.json

    finish_run(folder, assembly, state, method=assembly.strategy.name, extra=describe_attack(cfg, assembly.party_ids),
               data_size=data_bytes(assembly, loaded), parties=loaded)
    _drop_cached_replies(ledgers)
    return _result(folder.path, state)


def _starting_point(assembly: Assembly, folder: RunFolder) -> tuple[ModelState, int, Any]:
    """(global model, first round, server optimizer state): round 0, or the checkpoint on resume."""
    point = folder.resume
    if point is None:
        return assembly.initial_state(), 1, None
    return point.state, point.start, point.optimizer_state


def _restore_old_checkpoint(folder: RunFolder, parties: Any) -> None:
    """A checkpoint written before the party-state store kept parties' ledgers in its metadata."""
    point = folder.resume
    for pid, saved in ({} if point is None else point.extra.get("parties", {})).items():
        if pid in parties and parties[pid].ledger is None:  # a party's own ledger is newer
            parties[pid].restore_state(saved)
            parties.store.save(pid, parties[pid].state, point.start - 1)


def _drop_cached_replies(ledgers: Path) -> None:
    """A finished run re-issues no task: the parties' cached replies go, their ledgers stay."""
    from pollen.client.ledger import LEDGER_FILE, Ledger

    for path in sorted(ledgers.glob(f"party-*/{LEDGER_FILE}")) if ledgers.is_dir() else ():
        Ledger(path.parent, path.parent.name.removeprefix("party-")).drop_replies()


def _result(run_dir: Path, state: ModelState) -> RunResult:
    from pollen.telemetry.history import read_history

    return RunResult(run_dir, state, read_history(run_dir))


def centralized(config: Any = None, run_dir: str | Path | None = None, *, app: Any = None, overwrite: bool = False,
                callbacks: Sequence[Callable[[Any], None]] = (), **overrides: Any) -> RunResult:
    """Train the same model on the pooled training data with the same budget of passes.

    FedAvg with R rounds, E local epochs and a fraction C of the parties trained per round makes
    R·E·C passes over the data; the baseline makes the same number of epochs (one history line
    per round-equivalent), with one optimizer for the whole run.
    """
    assembly = assemble(resolve_config(config, overrides), app)
    with torch_threads(assembly.cfg.simulation.threads):
        return _centralized(assembly, run_dir, overwrite, callbacks)


def _centralized(assembly: Assembly, run_dir: str | Path | None, overwrite: bool,
                 callbacks: Sequence[Callable[[Any], None]]) -> RunResult:
    import torch

    from pollen.client.data import Shard
    from pollen.client.trainer import load_numpy_state, make_optimizer, state_to_numpy
    from pollen.telemetry.events import RoundCompleted, RunCompleted, RunStarted
    from pollen.types import RoundConfig

    cfg = assembly.cfg
    f, t = cfg.federation, cfg.train
    per_round = assembly.strategy.sampler.sample_size(cfg.data.parties) / cfg.data.parties
    total_epochs = f.rounds * t.epochs * per_round
    folder = open_run(assembly, kind="-centralized", run_dir=run_dir, overwrite=overwrite, callbacks=callbacks,
                      title=None if run_dir is None else Path(run_dir).name + " (centralized)")
    trainer = assembly.trainer()
    evaluate = assembly.evaluator(trainer)
    pooled = [assembly.party_data(pid, assembly.simulation_path(pid)).train for pid in assembly.party_ids]
    if not all(isinstance(s, Shard) for s in pooled):
        raise RunError("the centralized baseline pools in-memory (x, y) data; this app's parties return Datasets")
    x = torch.cat([s.tensors()[0] for s in pooled]).to(trainer.device)
    y = torch.cat([s.tensors()[1] for s in pooled]).to(trainer.device)
    state = assembly.initial_state()
    folder.events.emit(RunStarted(f.rounds, 1, 1))
    gen = torch.Generator().manual_seed(cfg.run.seed)
    n = len(x)
    load_numpy_state(trainer.model, state)
    base = RoundConfig(lr=t.lr, optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay,
                       batch_size=t.batch_size)
    opt = make_optimizer(trainer.model.parameters(), base)
    batches_per_round = int(round(total_epochs / f.rounds * n / t.batch_size))
    order, pos = torch.randperm(n, generator=gen), 0
    model = trainer.model
    try:
        for rnd in range(1, f.rounds + 1):
            t0 = time.perf_counter()
            model.train()
            total, seen = 0.0, 0
            for _ in range(batches_per_round):  # R·E·C / R epochs' worth of batches, carried over epochs
                if pos >= n:
                    order, pos = torch.randperm(n, generator=gen), 0
                b = order[pos : pos + t.batch_size].to(x.device)
                pos += t.batch_size
                xb = x[b] if trainer.augment is None else trainer.augment(x[b], gen)
                opt.zero_grad(set_to_none=True)
                loss = trainer.loss_fn(model(xb), y[b])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                seen += len(b)
            for g in opt.param_groups:
                g["lr"] *= t.lr_decay
            record: dict[str, Any] = {"round": rnd, "train_loss": total / max(seen, 1), "parties": ["pooled"],
                                      "parties_failed": [], "aggregated": True}
            if evaluate is not None and (rnd % f.eval_every == 0 or rnd == f.rounds):
                res = evaluate(state_to_numpy(model))
                record.update(loss=res.loss, **res.metrics)
            record.update(seconds=time.perf_counter() - t0, bytes_up=0, bytes_down=0)
            folder.events.emit(RoundCompleted(rnd, record))
    except KeyboardInterrupt:
        raise RunInterrupted(folder.path) from None
    folder.events.emit(RunCompleted({}))
    state = state_to_numpy(model)
    finish_run(folder, assembly, state, method="centralized", extra={"epochs": total_epochs},
               data_size=int(x.element_size() * x.numel() + y.element_size() * y.numel()))
    return _result(folder.path, state)

