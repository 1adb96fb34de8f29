"""``pollen server``, ``pollen client``, ``pollen certs`` and ``pollen status``: a deployed
federation over gRPC (docs/deployment.md)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import sys
from pathlib import Path

from pollen.cli import SERVER_SECTIONS, add_config_flags, config_from_args, explicit_flags
from pollen.errors import ConfigError, PartyFailure


# ------------------------------------------------------------ server
def server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a crashed run from its last checkpoint (network flags "
                   "may change; --rounds N extends a finished run)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name> (default: refuse)")
    p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line on stderr")
    p.add_argument("--num-parties", type=int, metavar="N",
                   help="parties in the federation: wait for N to connect before round 1 (sets --min-parties and --parties)")
    from pollen.ui.watch import add_watch_flags

    add_watch_flags(p)
    add_config_flags(p, SERVER_SECTIONS)


def server_cmd(args: argparse.Namespace) -> int:
    check_host(args.cfg__network__host)  # before anything is imported or printed
    if args.log_json:
        from pollen.transport.rpc.logs import use_json_logs

        use_json_logs()
    if args.num_parties is not None:
        if args.cfg__network__min_parties is None:
            args.cfg__network__min_parties = args.num_parties
        if args.cfg__data__parties is None:
            args.cfg__data__parties = args.num_parties
    from pollen.compose import resume_config

    resume = Path(args.resume) if args.resume else None
    cfg = resume_config(resume, explicit_flags(args)) if resume else config_from_args(args)
    from pollen.transport.rpc import grpclog

    # Before grpc is imported: an insecure coordinator learns of TLS clients only from gRPC's http tracer.
    traced = cfg.network.insecure and grpclog.enable_http_trace()
    reporter = grpclog.HandshakeReporter(logging.getLogger("pollen.server"))
    capture = grpclog.StderrCapture(grpclog.server_handler(reporter, drop_info=traced))
    capture.start()
    from pollen.server.shutdown import stop_on_signals

    restore = stop_on_signals()  # SIGTERM/SIGINT: stop after the checkpoint in progress, tell the parties
    try:
        from pollen.transport.rpc.serve import run_server
        from pollen.ui.watch import watching

        with watching(args, cfg, deployed=True) as watch:  # --ui-port, --track
            result = run_server(cfg, resume=resume, overwrite=args.overwrite, callbacks=watch.callbacks,
                                control=watch.control, on_start=watch.on_start)
    finally:
        restore()
        capture.stop()
        reporter.flush()
    from pollen.telemetry.report import compare

    print(compare([result.run_dir]))
    print(f"run written to {result.run_dir}/")
    return 0


def check_host(host: str | None) -> None:
    """Refuse a ``--host`` that carries a port (or a scheme), naming the flags to use instead.

    Raises:
        ConfigError: ``HOST:PORT``, ``[v6]:PORT`` or a URL.
    """
    if not host:
        return
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        return  # [v6]
    try:
        ipaddress.ip_address(h)
        return  # 0.0.0.0, ::, 192.168.1.10, fe80::1
    except ValueError:
        pass
    if "://" in h or "/" in h:
        raise ConfigError(f"--host {host!r}: give an address to listen on, not a URL (e.g. --host 0.0.0.0 --port 9394)")
    addr, sep, port = h.rpartition(":")
    if sep:
        example = f"--host {addr.strip('[]') or '0.0.0.0'} --port {port if port.isdigit() else 9394}"
        raise ConfigError(f"--host {host!r}: give the address alone and the port with --port (e.g. {example})")


# ------------------------------------------------------------ client
def client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--party-id", required=True, help="this party's id (its certificate must be party-<id>)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the coordinator, e.g. localhost:9394")
    p.add_argument("--data", "--data-path", dest="data_path", metavar="PATH",
                   help="this party's own data: what its app reads as ctx.data_path (for the built-in datasets, "
                        "the shard folder 'pollen partition --out data/' wrote, e.g. data/party0)")
    p.add_argument("--app", metavar="APP", help="this party's app (.py file or module) with model() and load_data(ctx) "
                   "(default: the one the coordinator runs)")
    p.add_argument("--device", metavar="DEVICE", help="where this party trains: auto, cpu, cuda, cuda:N (default: the run's)")
    p.add_argument("--certs-dir", default="certs", metavar="DIR", help="folder with ca.pem and party-<id>.pem/.key (default: certs)")
    p.add_argument("--insecure", action="store_true", help="connect without TLS (only to an --insecure coordinator)")
    p.add_argument("--server-name", metavar="NAME", help="name on the server certificate when it differs from HOST")
    p.add_argument("--retry-seconds", type=float, default=300.0, help="give up after this long without the coordinator (default: 300)")
    p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line on stderr")
    p.add_argument("--backoff-cap", type=float, default=30.0, help="longest wait between reconnect attempts, seconds (default: 30)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for local training (default: torch's)")
    p.add_argument("--ledger", metavar="DIR", help="this party's privacy ledger (its accountant, kept across restarts "
                   "and runs; default: next to --data, e.g. data/party0.ledger)")
    p.add_argument("--max-epsilon", type=float, metavar="EPS", help="this party's own privacy budget: it refuses any "
                   "task that would spend more, whatever the coordinator asks (default: the run's --target-epsilon "
                   "when the ledger is created)")
    p.add_argument("--delta", type=float, metavar="D", help="δ of this party's own budget (default: the run's --delta "
                   "when the ledger is created)")
    p.add_argument("--secagg-trust-coordinator", action="store_true", help="accept a secure-aggregation threshold of "
                   "at most half a neighbourhood when the coordinator asks for one (then a coordinator that lies can "
                   "rebuild this party's update; default: refuse)")


def client_cmd(args: argparse.Namespace) -> int:
    from pollen.transport.rpc.party import GrpcParty, PartyOptions, split_address

    split_address(args.server)  # a host without a port is refused before anything prints
    if args.log_json:
        from pollen.transport.rpc.logs import use_json_logs

        use_json_logs()
    else:
        plain_logs("pollen.party", verbose=getattr(args, "verbose", False))
    opts = PartyOptions(party_id=args.party_id, server=args.server, data_path=args.data_path, certs_dir=args.certs_dir,
                        insecure=args.insecure, server_name=args.server_name, retry_seconds=args.retry_seconds,
                        backoff_cap=args.backoff_cap, threads=args.threads, app=args.app, device=args.device,
                        ledger=args.ledger, max_epsilon=args.max_epsilon, delta=args.delta,
                        secagg_trust_coordinator=args.secagg_trust_coordinator)
    if args.insecure:
        print("WARNING: --insecure: this party sends its updates without TLS; local experiments only", file=sys.stderr)
    party = GrpcParty(opts)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    from pollen.transport.rpc.grpclog import StderrCapture, party_handler

    with StderrCapture(party_handler):  # gRPC's raw handshake lines: the retry message explains them
        try:
            done = party.run()
        except KeyboardInterrupt:
            party.leave()
            print(f"party {args.party_id} left the federation", file=sys.stderr)
            return 0
    if party.broken:
        raise PartyFailure(args.party_id, "setup", f"{party.broken} (the coordinator was told with each of its "
                                                   f"{done} tasks)")
    print(f"party {args.party_id}: run finished after {done} tasks", file=sys.stderr)
    return 0


def plain_logs(name: str, verbose: bool = False) -> None:
    """Show logger ``name``'s INFO lines and up on stderr as bare messages (what a user reads)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


# ------------------------------------------------------------ certs
def certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="certs", metavar="DIR", help="output folder (default: certs)")
    p.add_argument("--parties", type=int, default=10, metavar="N", help="issue certificates for parties 0 … N-1 (default: 10)")
    p.add_argument("--hosts", default="localhost,127.0.0.1", help="comma-separated names/IPs the server certificate is valid for")
    p.add_argument("--revoke", metavar="PARTY_ID", help="instead: add a party id (or certificate serial) to DIR/revoked.txt")


def certs_cmd(args: argparse.Namespace) -> int:
    from pollen.transport.rpc.tls import make_certs

    out = Path(args.out)
    if args.revoke:
        with (out / "revoked.txt").open("a") as f:
            f.write(f"{args.revoke}\n")
        print(f"revoked {args.revoke} (a running coordinator refuses it from its next message)")
        return 0
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    make_certs(out, [str(i) for i in range(args.parties)], hosts)
    print(f"wrote ca.pem, server.pem/key (for {', '.join(hosts)}), admin.pem/key and party-0 … party-{args.parties - 1} "
          f"credentials to {out}/ — give each party only ca.pem and its own party-<id>.pem/key and party-<id>.sign.pem/key; "
          "keep ca.key offline, away from the coordinator (secure aggregation trusts the CA, not the coordinator)")
    return 0


# ------------------------------------------------------------ status
def status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the coordinator")
    p.add_argument("--certs-dir", default="certs", metavar="DIR", help="folder with ca.pem and admin.pem/.key (default: certs)")
    p.add_argument("--insecure", action="store_true", help="connect without TLS")
    p.add_argument("--server-name", metavar="NAME", help="name on the server certificate when it differs from HOST")
    p.add_argument("--json", action="store_true", help="print JSON")


def status_cmd(args: argparse.Namespace) -> int:
    from pollen.transport.rpc.status import fetch_status, format_status

    status = fetch_status(args.server, args.certs_dir, args.insecure, args.server_name)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
