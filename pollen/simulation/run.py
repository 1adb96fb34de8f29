"""``pollen simulate`` and ``pollen centralized``: run a configured federation on one machine
and write its run directory (config, history, model, report, plot)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from pollen.client.trainer import Trainer, load_numpy_state, state_to_numpy
from pollen.config import RunConfig, make_config, to_toml
from pollen.server.checkpoint import Checkpointer
from pollen.server.coordinator import Coordinator
from pollen.simulation.clock import with_simulated_clock
from pollen.simulation.build import Federation, cores, initial_state, make_pipeline, make_strategy, torch_threads
from pollen.simulation.process_pool import ProcessPoolTransport
from pollen.telemetry.events import EventBus, RoundCompleted, RunStarted
from pollen.telemetry.history import HistorySink, read_history
from pollen.telemetry.progress import ProgressSink
from pollen.telemetry.report import write_report
from pollen.transport.base import Transport
from pollen.transport.inprocess import InProcessTransport
from pollen.types import ModelState, RoundConfig

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    state: ModelState
    history: list[dict[str, Any]]


def run_dir_for(cfg: RunConfig, kind: str = "") -> Path:
    """``<runs_dir>/<name>`` (a name from dataset, split and time when none is set)."""
    name = cfg.run.name or f"{cfg.data.dataset}-{cfg.data.partition}{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.runs_dir) / name


def _prepare_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "config.toml").write_text(to_toml(cfg.to_dict()))


def make_bus(cfg: RunConfig, run_dir: Path, resume_after: int | None, title: str,
             restore: dict[str, Any] | None = None) -> EventBus:
    """History file + progress display (``restore``: the checkpoint's last record, on resume)."""
    bus = EventBus()
    bus.subscribe(HistorySink(run_dir / "history.jsonl", resume_after, restore))
    if cfg.run.progress:
        bus.subscribe(ProgressSink(title=title))
    return bus


def simulate(cfg: RunConfig, resume: Path | None = None) -> RunResult:
    """Run a federated simulation and write its run directory.

    Args:
        cfg: the run configuration.
        resume: a run directory to continue from its last checkpoint.
    """
    from pollen.privacy.checks import check_config

    check_config(cfg)  # refuse combinations that cannot work before loading anything
    with torch_threads(cfg.simulation.threads):
        return _simulate(cfg, resume)


def _simulate(cfg: RunConfig, resume: Path | None) -> RunResult:
    run_dir = Path(resume) if resume is not None else run_dir_for(cfg)
    fed = Federation.from_config(cfg)
    trainer = fed.make_trainer()
    pipeline = make_pipeline(cfg)
    strategy = make_strategy(cfg)
    state = initial_state(cfg, fed.dataset)
    parties = fed.make_parties(trainer, pipeline=pipeline) if cfg.simulation.backend != "process" else None
    # simulated parties' small state (privacy accountants) goes into every checkpoint
    checkpointer = Checkpointer(run_dir, None if parties is None else
                                (lambda: {"parties": {pid: st for pid, p in parties.items() if (st := p.durable_state())}}))
    start, opt_state, last = 1, None, None
    if resume is not None:
        point = checkpointer.resume_point(pipeline)
        start, state, opt_state, last = point.start, point.state, point.optimizer_state, point.record
        for pid, saved in point.extra.get("parties", {}).items():
            if parties is not None and pid in parties:
                parties[pid].restore_state(saved)
        if parties is None and (cfg.privacy.dp_sgd or cfg.privacy.client_dp == "local"):
            log.warning("resuming with the process backend: the parties' own privacy accountants restart at zero "
                        "(their state lives in the worker processes); use the inline backend to resume DP runs")
    _prepare_dir(run_dir, cfg, resume is not None)
    bus = make_bus(cfg, run_dir, start - 1 if resume is not None else None, run_dir.name, last)
    transport: Transport
    if parties is None:
        workers = cfg.simulation.workers or cores()
        transport = ProcessPoolTransport(cfg.to_dict(), fed.party_ids, workers, cfg.simulation.threads or 1)
    else:
        transport = InProcessTransport(parties)
    transport = with_simulated_clock(transport, cfg)  # --party-speed / --dropout: virtual time
    coordinator = Coordinator(
        strategy=strategy, transport=transport, rounds=cfg.federation.rounds, pipeline=pipeline,
        evaluate=fed.make_evaluator(trainer), eval_every=cfg.federation.eval_every,
        fed_eval=cfg.data.holdout > 0, fed_eval_every=cfg.federation.fed_eval_every,
        min_fit_parties=cfg.federation.min_fit_parties, round_timeout=cfg.federation.round_timeout,
        events=bus, checkpointer=checkpointer,
    )
    with transport:
        state = coordinator.run(state, start_round=start, optimizer_state=opt_state)
    from pollen.attacks import describe_attack  # simulated malicious parties, if any, go in summary.json

    finish_run(run_dir, state, fed, method=strategy.name, extra=describe_attack(cfg, fed.party_ids))
    return RunResult(run_dir, state, read_history(run_dir))


def finish_run(run_dir: Path, state: ModelState, fed: Federation, method: str,
               extra: dict[str, Any] | None = None) -> None:
    """Write the final model, summary.json and report.md (+ plot) of a run."""
    save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(run_dir / "model.safetensors"))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(method=method, data_bytes=int(fed.dataset.x_train.nbytes + fed.dataset.y_train.nbytes),
                   parties=len(fed.parts), **(extra or {}))
    summary_path.write_text(json.dumps(summary, indent=2))
    write_report(run_dir)


def centralized(cfg: RunConfig, run_dir: Path | None = None) -> RunResult:
    """Train the same model on the pooled training data with the same budget of passes.

    FedAvg with R rounds, E local epochs and a fraction C of the data trained per round makes
    R·E·C passes over the data; the baseline makes the same number of epochs (one history line
    per round-equivalent).
    """
    with torch_threads(cfg.simulation.threads):
        return _centralized(cfg, run_dir or run_dir_for(cfg, "-centralized"))


def _centralized(cfg: RunConfig, run_dir: Path) -> RunResult:
    fed = Federation.from_config(cfg)
    trainer = fed.make_trainer()
    evaluate = fed.make_evaluator(trainer)
    f = cfg.federation
    per_round = (f.parties_per_round / cfg.data.parties) if f.parties_per_round else f.fraction
    total_epochs = f.rounds * cfg.train.epochs * per_round
    _prepare_dir(run_dir, cfg, False)
    bus = make_bus(cfg, run_dir, None, run_dir.name + " (centralized)")
    idx = torch.from_numpy(np.sort(np.concatenate(fed.parts)))
    x, y = fed.x_train[idx], fed.y_train[idx]
    state = initial_state(cfg, fed.dataset)
    bus.emit(RunStarted(f.rounds, 1, 1))
    gen = torch.Generator().manual_seed(cfg.run.seed)
    n = len(x)
    t = cfg.train
    # One optimizer for the whole run (as centralized training does); each "round" trains
    # R·E·C / R epochs' worth of batches, carried over fractional epochs.
    load_numpy_state(trainer.model, state)
    from pollen.client.trainer import make_optimizer

    base = RoundConfig(lr=t.lr, optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size)
    opt = make_optimizer(trainer.model.parameters(), base)
    batches_per_round = int(round(total_epochs / f.rounds * n / t.batch_size))
    order, pos = torch.randperm(n, generator=gen), 0
    for rnd in range(1, f.rounds + 1):
        t0 = time.perf_counter()
        trainer.model.train()
        total, seen = 0.0, 0
        for _ in range(batches_per_round):
            if pos >= n:
                order, pos = torch.randperm(n, generator=gen), 0
            b = order[pos : pos + t.batch_size]
            pos += t.batch_size
            xb = x[b] if trainer.augment is None else trainer.augment(x[b], gen)
            opt.zero_grad(set_to_none=True)
            loss = trainer.loss_fn(trainer.model(xb), y[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        for g in opt.param_groups:
            g["lr"] *= t.lr_decay
        record: dict[str, Any] = {"round": rnd, "train_loss": total / max(seen, 1), "parties": ["pooled"], "parties_failed": []}
        if rnd % f.eval_every == 0 or rnd == f.rounds:
            res = trainer.evaluate(None, *_test(fed))
            record.update(accuracy=res.accuracy, loss=res.loss)
        record.update(seconds=time.perf_counter() - t0, bytes_up=0, bytes_down=0)
        bus.emit(RoundCompleted(rnd, record))
    from pollen.telemetry.events import RunCompleted

    bus.emit(RunCompleted({}))
    state = state_to_numpy(trainer.model)
    finish_run(run_dir, state, fed, method="centralized", extra={"epochs": total_epochs})
    return RunResult(run_dir, state, read_history(run_dir))


def _test(fed: Federation) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(fed.dataset.x_test), torch.from_numpy(fed.dataset.y_test)
