"""``pollen vertical simulate | server | party``: vertical federated learning from the command line
(docs/vertical.md)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterable
from typing import Any

SUBCOMMANDS = {
    "simulate": "run every party of a vertical federation on this machine",
    "server": "run the coordinator of a deployed vertical federation (parties connect over gRPC with mutual TLS)",
    "party": "run one party (guest, host or arbiter) of a deployed vertical federation on its own data",
}


def _add_flags(p: argparse.ArgumentParser, sections: Iterable[str]) -> None:
    """``--config FILE`` plus one flag per field of the vertical config's ``sections``."""
    from pollen.vertical.config import SECTIONS, flag_names

    p.add_argument("--config", metavar="FILE", help="TOML file with the vertical run's configuration (flags override it)")
    wanted = set(sections)
    groups: dict[str, Any] = {}
    for name, (section, key) in flag_names().items():
        if section not in wanted:
            continue
        field = SECTIONS[section].model_fields[key]
        g = groups.setdefault(section, p.add_argument_group(f"[{section}]"))
        desc = field.description or ""
        helptext = desc if "default" in desc else f"{desc} (default: {field.default})"
        flag = "--" + name.replace("_", "-")
        dest = f"v__{section}__{key}"
        if field.annotation is bool:
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            g.add_argument(flag, dest=dest, default=None, metavar=key.upper(), help=helptext)


def _config(args: argparse.Namespace) -> Any:
    from pollen.config import load_toml, merge
    from pollen.vertical.config import make_vertical_config

    data = load_toml(args.config) if getattr(args, "config", None) else {}
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("v__") and value is not None:
            _, section, key = dest.split("__")
            flags.setdefault(section, {})[key] = value
    return make_vertical_config(merge(data, flags))


def vertical_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="vertical_command", metavar="SUBCOMMAND")
    sim = sub.add_parser("simulate", help=SUBCOMMANDS["simulate"], description=SUBCOMMANDS["simulate"] + ".")
    sim.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name>")
    _add_flags(sim, ("app", "vertical", "data", "run"))
    srv = sub.add_parser("server", help=SUBCOMMANDS["server"], description=SUBCOMMANDS["server"] + ".")
    srv.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name>")
    _add_flags(srv, ("app", "vertical", "data", "network", "run"))
    party = sub.add_parser("party", help=SUBCOMMANDS["party"], description=SUBCOMMANDS["party"] + ".")
    party.add_argument("--party-id", required=True, help="this party's id: 0 is the guest (labels), 1 … the hosts, "
                       "the last one the arbiter (lr); its certificate must be party-<id>")
    party.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the vertical coordinator")
    party.add_argument("--data", dest="data_path", metavar="PATH", help="this party's own data (ctx.data_path of its app)")
    party.add_argument("--app", metavar="APP", help="this party's vertical app (.py file or module; default: the "
                       "coordinator's, or the built-in datasets)")
    party.add_argument("--out", metavar="DIR", help="write this party's model part here when the run ends")
    party.add_argument("--certs-dir", default="certs", metavar="DIR", help="folder with ca.pem and party-<id>.pem/.key")
    party.add_argument("--insecure", action="store_true", help="connect without TLS (only to an --insecure coordinator)")
    party.add_argument("--server-name", metavar="NAME", help="name on the server certificate when it differs from HOST")
    party.add_argument("--retry-seconds", type=float, default=300.0, help="give up after this long without the coordinator")


def vertical_cmd(args: argparse.Namespace) -> int:
    from pollen.errors import ConfigError

    command = getattr(args, "vertical_command", None)
    if command is None:
        raise ConfigError("pollen vertical needs a subcommand: " + "; ".join(f"{k} ({v})" for k, v in SUBCOMMANDS.items()))
    return {"simulate": _simulate, "server": _server, "party": _party}[command](args)


def _simulate(args: argparse.Namespace) -> int:
    from pollen.telemetry.report import compare
    from pollen.vertical.run import simulate_vertical

    result = simulate_vertical(_config(args), overwrite=args.overwrite)
    print(compare([result.run_dir]))
    _print_alignment(result.summary)
    print(f"run written to {result.run_dir}/ (report.md, history.jsonl, summary.json, model-<party>.safetensors)")
    return 0


def _server(args: argparse.Namespace) -> int:
    from pollen.telemetry.report import compare
    from pollen.transport.cli import check_host
    from pollen.vertical.run import serve_vertical

    check_host(args.v__network__host)
    cfg = _config(args)
    if cfg.network.insecure:
        print("WARNING: --insecure: no TLS and no authentication; local experiments only", file=sys.stderr)
    result = serve_vertical(cfg, overwrite=args.overwrite)
    print(compare([result.run_dir]))
    _print_alignment(result.summary)
    print(f"run written to {result.run_dir}/")
    return 0


def _print_alignment(summary: dict[str, Any]) -> None:
    if summary.get("psi"):
        print(f"PSI: {summary['aligned']} common ids ({summary['psi_seconds']:.2f} s, {summary['psi_bytes'] / 1e6:.2f} MB); "
              f"{summary['train_rows']} rows trained on, {summary['test_rows']} held out")


def _party(args: argparse.Namespace) -> int:
    from pollen.transport.cli import plain_logs
    from pollen.transport.rpc.party import GrpcParty, PartyOptions, split_address
    from pollen.vertical.run import party_builder, save_party_model

    split_address(args.server)
    plain_logs("pollen.party", verbose=getattr(args, "verbose", False))
    opts = PartyOptions(party_id=args.party_id, server=args.server, data_path=args.data_path, certs_dir=args.certs_dir,
                        insecure=args.insecure, server_name=args.server_name, retry_seconds=args.retry_seconds,
                        app=args.app)
    party = GrpcParty(opts, build=party_builder())
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        done = party.run()
    except KeyboardInterrupt:
        party.leave()
        print(f"party {args.party_id} left", file=sys.stderr)
        return 0
    if party.broken:
        from pollen.errors import PartyFailure

        raise PartyFailure(args.party_id, "setup", party.broken)
    saved = save_party_model(party.party, args.out) if args.out and party.party is not None else None
    print(f"party {args.party_id}: vertical run finished after {done} steps"
          + (f"; model part written to {saved}" if saved else ""), file=sys.stderr)
    return 0
