"""``pollen server``, ``pollen client``, ``pollen certs`` and ``pollen status``: a deployed
federation over gRPC (docs/deployment.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from pollen.cli import add_config_flags, command, config_from_args


# ------------------------------------------------------------ server
@command("server", "run the coordinator of a deployed federation (parties connect over gRPC)")
def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a crashed run from its last checkpoint (network flags may change)")
    p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line on stderr")
    p.add_argument("--num-parties", type=int, metavar="N",
                   help="parties in the federation: wait for N to connect before round 1 (sets --min-parties and --parties)")
    add_config_flags(p)


@_server_args.handler
def _server(args: argparse.Namespace) -> int:
    from pollen.config import load_toml, make_config, merge
    from pollen.telemetry.report import compare
    from pollen.transport.rpc.serve import run_server

    if args.log_json:
        from pollen.transport.rpc.logs import use_json_logs

        use_json_logs()
    if args.num_parties is not None:
        if args.cfg__network__min_parties is None:
            args.cfg__network__min_parties = args.num_parties
        if args.cfg__data__parties is None:
            args.cfg__data__parties = args.num_parties
    cfg = config_from_args(args)
    if args.resume:
        flags = {"network": cfg.network.model_dump(exclude_defaults=True)}
        cfg = make_config(merge(load_toml(Path(args.resume) / "config.toml"), flags))
        result = run_server(cfg, resume=Path(args.resume))
    else:
        result = run_server(cfg)
    print(compare([result.run_dir]))
    print(f"run written to {result.run_dir}/")
    return 0


# ------------------------------------------------------------ client
@command("client", "run one party of a deployed federation: train on local data, send updates")
def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--party-id", required=True, help="this party's id (its certificate must be party-<id>)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the coordinator")
    p.add_argument("--data-path", required=True, metavar="DIR", help="this party's shard (written by 'pollen partition --out data/')")
    p.add_argument("--certs-dir", default="certs", metavar="DIR", help="folder with ca.pem and party-<id>.pem/.key (default: certs)")
    p.add_argument("--insecure", action="store_true", help="connect without TLS (only to an --insecure coordinator)")
    p.add_argument("--server-name", metavar="NAME", help="name on the server certificate when it differs from HOST")
    p.add_argument("--retry-seconds", type=float, default=300.0, help="give up after this long without the coordinator (default: 300)")
    p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line on stderr")
    p.add_argument("--backoff-cap", type=float, default=30.0, help="longest wait between reconnect attempts, seconds (default: 30)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for local training (default: torch's)")


@_client_args.handler
def _client(args: argparse.Namespace) -> int:
    from pollen.transport.rpc.party import GrpcParty, PartyOptions

    if args.log_json:
        from pollen.transport.rpc.logs import use_json_logs

        use_json_logs()
    opts = PartyOptions(party_id=args.party_id, server=args.server, data_path=args.data_path, certs_dir=args.certs_dir,
                        insecure=args.insecure, server_name=args.server_name, retry_seconds=args.retry_seconds,
                        backoff_cap=args.backoff_cap, threads=args.threads)
    if args.insecure:
        print("WARNING: --insecure: this party sends its updates without TLS; local experiments only", file=sys.stderr)
    party = GrpcParty(opts)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        done = party.run()
    except KeyboardInterrupt:
        party.leave()
        print(f"party {args.party_id} left the federation", file=sys.stderr)
        return 0
    print(f"party {args.party_id}: run finished after {done} tasks", file=sys.stderr)
    return 0


# ------------------------------------------------------------ certs
@command("certs", "create a CA, a server certificate and party certificates for mutual TLS")
def _certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="certs", metavar="DIR", help="output folder (default: certs)")
    p.add_argument("--parties", type=int, default=10, metavar="N", help="issue certificates for parties 0 … N-1 (default: 10)")
    p.add_argument("--hosts", default="localhost,127.0.0.1", help="comma-separated names/IPs the server certificate is valid for")
    p.add_argument("--revoke", metavar="PARTY_ID", help="instead: add a party id (or certificate serial) to DIR/revoked.txt")


@_certs_args.handler
def _certs(args: argparse.Namespace) -> int:
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
          f"credentials to {out}/ — give each party only ca.pem and its own party-<id>.pem/key; keep ca.key offline")
    return 0


# ------------------------------------------------------------ status
@command("status", "show a running coordinator's connected parties and progress")
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the coordinator")
    p.add_argument("--certs-dir", default="certs", metavar="DIR", help="folder with ca.pem and admin.pem/.key (default: certs)")
    p.add_argument("--insecure", action="store_true", help="connect without TLS")
    p.add_argument("--server-name", metavar="NAME", help="name on the server certificate when it differs from HOST")
    p.add_argument("--json", action="store_true", help="print JSON")


@_status_args.handler
def _status(args: argparse.Namespace) -> int:
    from pollen.transport.rpc.status import fetch_status, format_status

    status = fetch_status(args.server, args.certs_dir, args.insecure, args.server_name)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
