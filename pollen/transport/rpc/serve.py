"""``pollen server``: the coordinator of a deployed federation.

It loads the test set for server-side evaluation only, waits for ``--min-parties`` parties, and
runs the same ``Coordinator`` as simulation over a ``GrpcTransport``. It checkpoints after every
round; ``--resume runs/<name>`` continues a crashed run from its last checkpoint (sampling and
party randomness derive from (seed, round), so the result equals an uninterrupted run's).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from pollen.config import RunConfig, make_config, merge, to_toml
from pollen.data import load_dataset
from pollen.errors import RunError
from pollen.server.checkpoint import Checkpointer
from pollen.server.coordinator import Coordinator
from pollen.simulation.build import Federation, initial_state, make_pipeline, make_strategy, model_name, torch_threads
from pollen.simulation.run import RunResult, finish_run, make_bus, run_dir_for
from pollen.telemetry.events import Event, RoundCompleted, RoundStarted, RunCompleted, RunStarted
from pollen.telemetry.history import read_history
from pollen.transport.rpc.hub import GrpcTransport, NetStats
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList

log = logging.getLogger("pollen.server")
INSECURE_WARNING = """
*****************************************************************************************
*  WARNING: --insecure — no TLS and no authentication. Models and updates travel in the  *
*  clear and anyone who reaches this port can join as any party. Local experiments only. *
*****************************************************************************************
"""


class _Progress:
    """Keeps ``NetStats.progress`` current for ``pollen status``."""

    def __init__(self, stats: NetStats) -> None:
        self.p = stats.progress

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.p.update(rounds=event.rounds, round=event.start_round - 1, phase="training")
        elif isinstance(event, RoundStarted):
            self.p.update(round=event.round, phase="training")
        elif isinstance(event, RoundCompleted) and event.record.get("accuracy") is not None:
            self.p["accuracy"] = event.record["accuracy"]
        elif isinstance(event, RunCompleted):
            self.p["phase"] = "finished"


def transport_stats(hub: GrpcTransport) -> dict:
    """The transport counters the Prometheus collector reads."""
    s = hub.stats
    return {"parties_connected": len(hub.connected()), "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
            "rejected": dict(s.rejected), "dropped": s.dropped}


def resolve(cfg: RunConfig, dataset_shape: tuple[int, ...]) -> RunConfig:
    """The config with the model name resolved (parties build exactly this model)."""
    from pollen.models import default_model_for

    name = cfg.model.model or default_model_for(dataset_shape)
    return make_config(merge(cfg.to_dict(), {"model": {"model": name}}))


def run_server(cfg: RunConfig, resume: Path | None = None) -> RunResult:
    """Serve a federation until its last round; write the run directory like simulation does.

    Raises:
        RunError: too few parties joined within ``--join-timeout``, or nothing to resume.
    """
    from pollen.privacy.checks import check_config

    check_config(cfg)  # refuse combinations that cannot work before opening a port
    net = cfg.network
    if net.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        log.warning("running without TLS or authentication (--insecure)")
    with torch_threads(cfg.simulation.threads):
        return _serve(cfg, resume)


def _serve(cfg: RunConfig, resume: Path | None) -> RunResult:
    net = cfg.network
    run_dir = Path(resume) if resume is not None else run_dir_for(cfg, "-grpc")
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    cfg = resolve(cfg, dataset.input_shape)
    fed = Federation(cfg, dataset, [np.empty(0, np.int64)] * cfg.data.parties)  # the server holds no party data
    trainer = fed.make_trainer()
    strategy, pipeline = make_strategy(cfg), make_pipeline(cfg)
    state, start, opt_state, last = initial_state(cfg, dataset), 1, None, None
    checkpointer = Checkpointer(run_dir)
    if resume is not None:
        point = checkpointer.resume_point(pipeline)
        start, state, opt_state, last = point.start, point.state, point.optimizer_state, point.record
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        (run_dir / "config.toml").write_text(to_toml(cfg.to_dict()))
    bus = make_bus(cfg, run_dir, start - 1 if resume is not None else None, run_dir.name, last)
    hub = GrpcTransport(net.heartbeat_interval, min_parties=net.min_parties, quorum_timeout=net.join_timeout)
    bus.subscribe(_Progress(hub.stats))
    if net.metrics_port:
        from pollen.telemetry.prometheus import PrometheusSink

        sink = PrometheusSink(lambda: transport_stats(hub))
        sink.serve(net.metrics_port, net.host)
        bus.subscribe(sink)
    revoked = net.revoked or str(Path(net.certs_dir) / "revoked.txt")
    service = FederationService(hub, cfg.to_dict(), int(net.max_message_mb * 1e6), net.insecure, RevocationList(revoked))
    server, port = start_server(service, net.host, net.port, None if net.insecure else net.certs_dir,
                          workers=max(32, 4 * cfg.data.parties + 8))
    print(f"coordinator listening on {net.host}:{port}; waiting for {net.min_parties} parties "
          f"(run directory {run_dir})", file=sys.stderr, flush=True)
    completed = False
    try:
        if not hub.wait_for_parties(net.min_parties, net.join_timeout):
            raise RunError(f"only {len(hub.connected())} of --min-parties={net.min_parties} parties joined within "
                           f"{net.join_timeout} s; start more parties or lower --min-parties")
        f = cfg.federation
        coordinator = Coordinator(
            strategy=strategy, transport=hub, rounds=f.rounds, pipeline=pipeline, evaluate=fed.make_evaluator(trainer),
            eval_every=f.eval_every, fed_eval=cfg.data.holdout > 0, fed_eval_every=f.fed_eval_every,
            min_fit_parties=f.min_fit_parties, round_timeout=f.round_timeout, events=bus, checkpointer=checkpointer)
        state = coordinator.run(state, start_round=start, optimizer_state=opt_state)
        completed = True
    finally:
        if completed:  # tell the parties the run is over; after a crash they keep retrying for --resume
            hub.close()
            hub.wait_stopped(timeout=5.0)
        server.stop(grace=1.0).wait()
        hub.close()
    finish_run(run_dir, state, fed, method=strategy.name,
               extra={"transport": "grpc", "tls": not net.insecure, "rejected_messages": dict(hub.stats.rejected)})
    return RunResult(run_dir, state, read_history(run_dir))
