"""The ``pollen`` command. Thin: parses arguments, builds a ``RunConfig``, calls the library,
and turns ``PollenError`` into a one-line message and exit status 2 (never a traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pollen.errors import PollenError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], None]], Callable[..., Any]]:
    """Register a subcommand: decorate ``add_arguments(parser)``; the handler is ``.run``."""

    def deco(add_args: Callable[[argparse.ArgumentParser], None]):
        def bind(handler: Command) -> Command:
            _COMMANDS[name] = (add_args, handler, help)
            return handler

        add_args.handler = bind  # type: ignore[attr-defined]
        return add_args

    return deco


# ------------------------------------------------------------ config flags
def add_config_flags(p: argparse.ArgumentParser, sections: Sequence[str] | None = None) -> None:
    """``--config FILE`` plus one flag per ``RunConfig`` field (its description is the help)."""
    from pollen.config import SECTIONS, flag_fields

    p.add_argument("--config", metavar="FILE", help="TOML file with the run configuration (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (section, key) in flag_fields().items():
        if sections is not None and section not in sections:
            continue
        field = SECTIONS[section].model_fields[key]
        g = groups.setdefault(section, p.add_argument_group(f"[{section}] options"))
        dest = f"cfg__{section}__{key}"
        default = field.default
        helptext = f"{field.description} (default: {default})"
        names = [f"--{flag}"] + (["--scheme"] if flag == "partition" else [])
        if field.annotation is bool:
            g.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            g.add_argument(*names, dest=dest, default=None, metavar=key.upper(), help=helptext)


def config_from_args(args: argparse.Namespace):
    """Merge the TOML file (if any) and the flags given into a validated ``RunConfig``."""
    from pollen.config import load_toml, make_config, merge

    data: dict[str, Any] = load_toml(args.config) if getattr(args, "config", None) else {}
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg__") and value is not None:
            _, section, key = dest.split("__", 2)
            if isinstance(value, str) and value.lower() in ("none", "null"):
                value = None
            flags.setdefault(section, {})[key] = value
    return make_config(merge(data, flags))


# ------------------------------------------------------------ commands
@command("simulate", "run a federation of virtual parties on this machine")
def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a crashed or stopped run from its last checkpoint")
    p.add_argument("--with-centralized", action="store_true", help="also train on pooled data and compare in the report")
    add_config_flags(p)


@_simulate_args.handler
def _simulate(args: argparse.Namespace) -> int:
    from pollen.config import load_toml, make_config
    from pollen.simulation import centralized, simulate
    from pollen.telemetry.report import compare

    if args.resume:
        cfg = make_config(load_toml(Path(args.resume) / "config.toml"))
        result = simulate(cfg, resume=Path(args.resume))
    else:
        cfg = config_from_args(args)
        result = simulate(cfg)
    runs = [result.run_dir]
    if args.with_centralized:
        base = centralized(cfg, result.run_dir.parent / (result.run_dir.name + "-centralized"))
        runs.append(base.run_dir)
        _attach_centralized(result.run_dir, base)
    print(compare(runs))
    print(f"run written to {result.run_dir}/ (report.md, history.jsonl, model.safetensors, plot.png)")
    return 0


def _attach_centralized(run_dir: Path, base) -> None:
    import json

    from pollen.telemetry.report import write_report

    summ = json.loads((run_dir / "summary.json").read_text())
    base_summary = json.loads((base.run_dir / "summary.json").read_text())
    acc = next((r["accuracy"] for r in reversed(base.history) if r.get("accuracy") is not None), None)
    summ["centralized"] = {"accuracy": acc, "epochs": base_summary.get("epochs"), "run": base.run_dir.name}
    (run_dir / "summary.json").write_text(json.dumps(summ, indent=2))
    write_report(run_dir)


@command("centralized", "train the same model on the pooled data (the baseline federated runs are compared to)")
def _central_args(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)


@_central_args.handler
def _central(args: argparse.Namespace) -> int:
    from pollen.simulation import centralized
    from pollen.telemetry.report import compare

    result = centralized(config_from_args(args))
    print(compare([result.run_dir]))
    print(f"run written to {result.run_dir}/")
    return 0


@command("partition", "split a dataset into per-party shards on disk (data/party0/, …)")
def _partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (one partyN/ folder per party)")
    add_config_flags(p, sections=("data", "run"))


@_partition_args.handler
def _partition(args: argparse.Namespace) -> int:
    from pollen.data import label_histogram, format_histogram, write_shards
    from pollen.simulation.build import Federation

    cfg = config_from_args(args)
    fed = Federation.from_config(cfg)
    out = write_shards(fed.dataset, fed.parts, args.out, scheme=cfg.data.partition, seed=cfg.run.seed)
    print(format_histogram(label_histogram(fed.dataset.y_train, fed.parts, fed.dataset.num_classes)))
    print(f"wrote {len(fed.parts)} shards to {out}/party0 … party{len(fed.parts) - 1}")
    return 0


@command("report", "print the summary of a run directory again")
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument("--rounds", action="store_true", help="print the per-round table too")


@_report_args.handler
def _report(args: argparse.Namespace) -> int:
    from pollen.telemetry.report import write_report

    path = write_report(args.run_dir)
    text = path.read_text()
    print(text if args.rounds else text.split("## Rounds")[0].rstrip())
    return 0


@command("compare", "print runs side by side (method, test accuracy, rounds, communication)")
def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", help="run directories")


@_compare_args.handler
def _compare(args: argparse.Namespace) -> int:
    from pollen.telemetry.report import compare

    print(compare(args.run_dirs))
    return 0


def _load_plugins() -> None:
    """Import modules that register more subcommands (server, client, certs, attack, …)."""
    import importlib

    for mod in ("pollen.transport.cli", "pollen.privacy.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):
                raise


def build_parser() -> argparse.ArgumentParser:
    """The full ``pollen`` argument parser."""
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="pollen",
        description="Pollen: federated learning across parties whose data never leaves them.",
        epilog="Run 'pollen COMMAND --help' for the options of a command. Quick start: 'pollen simulate'.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_args, _, help_) in _COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + "."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pollen`` command."""
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command][1](args)
    except PollenError as exc:
        if args.verbose:
            raise
        print(f"pollen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every finished round is saved; continue with 'pollen simulate --resume runs/<name>'", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # ``python -m pollen.cli``: run the imported module's main, so that plugin modules (which
    # import ``pollen.cli``) register their commands into the same table.
    from pollen.cli import main as _main

    sys.exit(_main())
