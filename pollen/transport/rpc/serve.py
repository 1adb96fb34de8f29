"""``pollen server``: the coordinator of a deployed federation.

It is assembled by ``pollen.compose`` from (config, app) like every mode; it holds no party's data
(only the app's ``server_data`` for evaluation, if the app has one), waits for ``--min-parties``
parties, and runs the same ``Coordinator`` as simulation over a ``GrpcTransport``. It checkpoints after every
round; ``--resume runs/<name>`` continues a crashed run from its last checkpoint (sampling and
party randomness derive from (seed, round), so the result equals an uninterrupted run's).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pollen.compose import Assembly, assemble, data_bytes, finish_run, open_run, torch_threads
from pollen.config import RunConfig
from pollen.errors import ConfigError, RunError
from pollen.simulation.run import RunInterrupted, RunResult
from pollen.telemetry.events import Event, PartyReplied, RoundCompleted, RoundStarted, RunCompleted, RunStarted
from pollen.telemetry.history import read_history
from pollen.server.shutdown import Stopped
from pollen.transport.rpc.guard import Guard
from pollen.transport.rpc.hub import REPLY_BYTES_PER_ELEMENT, GrpcTransport, NetStats
from pollen.transport.rpc.frontdoor import ADMIT_BURST
from pollen.transport.rpc.service import FederationService, listen_address, start_server, stream_window
from pollen.transport.rpc.tls import RevocationList
from pollen.types import state_nbytes

log = logging.getLogger("pollen.server")
MAX_WORKERS = 1024  # gRPC worker threads at most, whatever the federation's size
STOP_NOTICE_SECONDS = 10.0  # how long a stopping coordinator waits for its parties to hear it
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


class _PartyFailures:
    """Logs each party's failure with its reason, so an operator sees why a party did not train.

    The progress display prints them too; while it is on they are logged at INFO (``--log-json``,
    ``-v``), so a terminal does not show each one twice.
    """

    def __init__(self, display: bool) -> None:
        self.level = logging.INFO if display else logging.WARNING

    def __call__(self, event: Event) -> None:
        if isinstance(event, PartyReplied) and event.failure:
            log.log(self.level, "party %s failed in round %s: %s", event.party_id, event.round, event.failure,
                    extra={"event": "party_failed", "party": event.party_id, "round": event.round,
                           "reason": event.failure})


def last_failures(run_dir: Path, limit: int = 2) -> str:
    """The last round's party failures in a few words (``round 3: party 0: …``), or ``""``."""
    try:
        records = read_history(run_dir)
    except RunError:
        return ""
    last = next((r for r in reversed(records) if r.get("failures")), None)
    if last is None:
        return ""
    items = list(last["failures"].items())
    text = "; ".join(f"party {pid}: {reason[:200]}" for pid, reason in items[:limit])
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return f"round {last.get('round')}: {text}{more}"


def worker_threads(guard: Guard, parties: int) -> int:
    """gRPC worker threads: every call the guard lets in gets one at once (no call waits in a queue
    behind a stalled one) — each party's share, the anonymous pool and the admin's share."""
    return min(guard.per_caller * (parties + 1) + guard.anonymous, MAX_WORKERS)


def _tell_parties(hub: GrpcTransport, reason: str, run_dir: Path) -> None:
    """Tell the connected parties the coordinator stops and may be resumed (they wait for it)."""
    hub.close(reason=f"{reason} (pollen server --resume {run_dir})", resumable=True)
    hub.wait_stopped(timeout=STOP_NOTICE_SECONDS)


def transport_stats(hub: GrpcTransport) -> dict:
    """The transport counters the Prometheus collector reads."""
    s = hub.stats
    return {"parties_connected": len(hub.connected()), "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
            "rejected": dict(s.rejected), "dropped": s.dropped}


def run_server(cfg: RunConfig, app: Any = None, resume: Path | None = None, overwrite: bool = False,
               callbacks: Sequence[Callable[[Any], None]] = (), control: Any = None,
               on_start: Callable[[GrpcTransport], None] | None = None) -> RunResult:
    """Serve a federation until its last round; write the run folder like simulation does.

    Args:
        cfg: the run configuration (sent to every party that joins).
        app: the app (None: ``cfg.app.path``, or the built-in datasets); the coordinator needs only
            its ``model()`` and, for evaluation, its ``server_data(ctx)`` — never a party's data.
        resume: a run folder to continue from its last checkpoint.
        overwrite: replace a run already in the folder ``--name`` points to.
        callbacks: functions called with every event of the run (the dashboard's live feed, tracking).
        control: a ``pollen.server.control.Control`` (the control API's commands, between rounds).
        on_start: called with the transport once the port is open (the dashboard reads its parties).

    Raises:
        RunError: too few parties joined within ``--join-timeout``, nothing to resume, or no round
            aggregated anything.
    """
    if cfg.privacy.audit_canaries:
        raise ConfigError("the one-run privacy audit inserts canaries into simulated parties; a deployed coordinator "
                          "cannot: run `pollen audit` (a simulation) instead, or set --audit-canaries 0")
    assembly = assemble(cfg, app)  # refuses combinations that cannot work before opening a port
    net = assembly.cfg.network
    if net.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        log.warning("running without TLS or authentication (--insecure)")
    with torch_threads(assembly.cfg.simulation.threads):
        return _serve(assembly, resume, overwrite, callbacks, control, on_start)


def _serve(assembly: Assembly, resume: Path | None, overwrite: bool, callbacks: Sequence[Callable[[Any], None]],
           control: Any, on_start: Callable[[GrpcTransport], None] | None) -> RunResult:
    cfg = assembly.cfg
    net = cfg.network
    folder = open_run(assembly, kind="-grpc", run_dir=resume, resume=resume is not None, overwrite=overwrite,
                      callbacks=callbacks)
    trainer = assembly.trainer()
    state, start, opt_state = assembly.initial_state(), 1, None
    if folder.resume is not None:
        state, start, opt_state = folder.resume.state, folder.resume.start, folder.resume.optimizer_state
        folder.resume = None  # read: the coordinator is to hold the model alone (a big one's round spills it)
    members = assembly.party_ids  # --num-parties N: certificates party-0 … party-(N-1)
    hub = GrpcTransport(net.heartbeat_interval, min_parties=net.min_parties, quorum_timeout=net.quorum_timeout,
                        members=members, reply_bytes_per_element=256 if cfg.privacy.he else REPLY_BYTES_PER_ELEMENT)
    folder.events.subscribe(_Progress(hub.stats))
    folder.events.subscribe(_PartyFailures(display=cfg.run.progress))
    if net.metrics_port:
        from pollen.telemetry.prometheus import PrometheusSink

        sink = PrometheusSink(lambda: transport_stats(hub))
        sink.serve(net.metrics_port, net.host)
        folder.events.subscribe(sink)
    revoked = net.revoked or str(Path(net.certs_dir) / "revoked.txt")
    welcome = {"config": cfg.to_dict(), "signature": assembly.model_signature(state)}
    service = FederationService(hub, welcome, int(net.max_message_mb * 1e6), net.insecure, RevocationList(revoked),
                                members=members)
    window = stream_window(cfg.federation.stream_aggregate, state_nbytes(state), len(members))
    server, port = start_server(service, net.host, net.port, None if net.insecure else net.certs_dir,
                                workers=worker_threads(service.guard, len(members)), receive_window=window,
                                admit_rate=net.admit_rate, admit_burst=max(ADMIT_BURST, 2 * len(members)))
    print(f"coordinator listening on {listen_address(net.host, port)}; waiting for {net.min_parties} parties "
          f"(run directory {folder.path})", file=sys.stderr, flush=True)
    if on_start is not None:
        on_start(hub)
    completed = False
    try:
        if not hub.wait_for_parties(net.min_parties, net.join_timeout):
            raise RunError(f"only {len(hub.connected())} of --min-parties={net.min_parties} parties joined within "
                           f"{net.join_timeout:g} s (--join-timeout; missing: {hub.missing()}); start more parties "
                           "or lower --min-parties")
        coordinator = assembly.coordinator(hub, folder.events, folder.checkpointer, assembly.evaluator(trainer),
                                           control=control)
        handed, state = [state], None  # handed over: nothing here keeps the arrays alive during the run
        state = coordinator.run(handed.pop(), start_round=start, optimizer_state=opt_state)
        completed = True
    except Stopped as exc:  # SIGTERM / SIGINT: every finished round is checkpointed; the parties wait for --resume
        _tell_parties(hub, f"the coordinator was stopped ({exc.name}); it can be resumed", folder.path)
        raise RunInterrupted(folder.path, exc.signum) from None
    except KeyboardInterrupt:
        _tell_parties(hub, "the coordinator was interrupted; it can be resumed", folder.path)
        raise RunInterrupted(folder.path) from None
    except BaseException as exc:
        _tell_parties(hub, f"the coordinator stopped: {str(exc)[:200]}", folder.path)
        raise
    finally:
        if completed:  # tell the parties the run is over
            hub.close()
            hub.wait_stopped(timeout=5.0)
        server.stop(grace=1.0).wait()
        service.guard.close()
        hub.close()
    try:
        finish_run(folder, assembly, state, method=assembly.strategy.name, data_size=data_bytes(assembly),
                   extra={"transport": "grpc", "tls": not net.insecure, "rejected_messages": dict(hub.stats.rejected)})
    except RunError as exc:  # no round aggregated: name what the parties said, on the same line
        why = last_failures(folder.path)
        raise RunError(f"{exc}; {why}" if why else str(exc)) from None
    return RunResult(folder.path, state, read_history(folder.path))
