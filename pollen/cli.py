"""The ``pollen`` command. Thin: parses arguments, builds a ``RunConfig``, calls the library,
and turns ``PollenError`` into a one-line message and exit status 2 (never a traceback).

The commands are one explicit table (:data:`COMMANDS`): a command's module is imported only when
that command runs, so ``pollen --help`` answers without importing torch. Each command shows and
accepts only its own flags.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollen.errors import PollenError


@dataclass(frozen=True)
class Command:
    """One subcommand: where its flags and its handler live, and its one-line help."""

    module: str
    add_arguments: str  # name of ``fn(parser) -> None`` in ``module``
    handler: str  # name of ``fn(args) -> int`` in ``module``
    help: str

    def load(self) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.add_arguments), getattr(mod, self.handler)


COMMANDS: dict[str, Command] = {
    "simulate": Command("pollen.cli", "simulate_args", "simulate_cmd", "run a federation of virtual parties on this machine"),
    "centralized": Command("pollen.cli", "centralized_args", "centralized_cmd",
                           "train the same model on the pooled data (the baseline federated runs are compared to)"),
    "server": Command("pollen.transport.cli", "server_args", "server_cmd",
                      "run the coordinator of a deployed federation (parties connect over gRPC)"),
    "client": Command("pollen.transport.cli", "client_args", "client_cmd",
                      "run one party of a deployed federation: train on its own data, send updates"),
    "new": Command("pollen.cli", "new_args", "new_cmd", "write a small project (app.py, config.toml, README) to start from"),
    "partition": Command("pollen.cli", "partition_args", "partition_cmd",
                         "split a built-in dataset into per-party shards on disk (data/party0/, …)"),
    "report": Command("pollen.cli", "report_args", "report_cmd", "print the summary of a run directory again"),
    "compare": Command("pollen.cli", "compare_args", "compare_cmd",
                       "print runs side by side (method, primary metric, rounds, communication)"),
    "export": Command("pollen.cli", "export_args", "export_cmd", "export a run's trained model (TorchScript or ONNX)"),
    "certs": Command("pollen.transport.cli", "certs_args", "certs_cmd",
                     "create a CA, a server certificate and party certificates for mutual TLS"),
    "status": Command("pollen.transport.cli", "status_args", "status_cmd",
                      "show a running coordinator's connected parties and progress"),
    "keys": Command("pollen.privacy.cli", "keys_args", "keys_cmd",
                    "generate CKKS keys for --he: secret.ctx for the parties, public.ctx for the server"),
    "attack": Command("pollen.privacy.cli", "attack_args", "attack_cmd",
                      "run a privacy attack on a finished run: membership inference or gradient inversion"),
    "ui": Command("pollen.ui.watch", "ui_args", "ui_cmd",
                  "serve the web dashboard of a runs folder: watch, compare and start runs (needs the 'ui' extra)"),
    "audit": Command("pollen.privacy.cli", "audit_args", "audit_cmd",
                     "train once with canaries and bound ε from below (one-run audit), beside the accountant's ε"),
    "completion": Command("pollen.cli", "completion_args", "completion_cmd", "print a shell completion script (bash, zsh)"),
    "tune": Command("pollen.tuning.cli", "tune_args", "tune_cmd",
                    "tune hyper-parameters with many short federated runs (Optuna TPE + Hyperband; resumable)"),
    "vertical": Command("pollen.vertical.cli", "vertical_args", "vertical_cmd",
                        "vertical federated learning: PSI, hetero logistic regression, split learning"),
}

# The config sections (and, where not all, keys) each command offers as flags.
ALL = None
SIMULATE_SECTIONS: dict[str, set[str] | None] = {
    "app": ALL, "data": ALL, "model": ALL, "train": ALL, "federation": ALL, "strategy": ALL, "privacy": ALL,
    "compression": ALL, "attack": ALL, "simulation": ALL, "run": ALL}
SERVER_SECTIONS: dict[str, set[str] | None] = {
    "app": ALL, "data": {"dataset", "data_dir", "parties", "holdout"}, "model": ALL, "train": ALL, "federation": ALL,
    "strategy": {k for k in ("name", "server_lr", "proximal_mu", "server_momentum", "ema", "beta1", "beta2", "tau",
                             "local_layers", "async_buffer", "async_concurrency", "max_staleness", "staleness",
                             "staleness_a", "staleness_b", "lr_schedule", "lr_gamma", "lr_step_rounds", "lr_min",
                             "epochs_schedule", "config_hook", "byzantine_f", "trim_ratio", "multikrum_m",
                             "norm_bound")},
    "privacy": ALL, "compression": ALL, "network": ALL, "simulation": {"threads"},
    "run": {"name", "runs_dir", "seed", "device", "progress"}}
CENTRALIZED_SECTIONS: dict[str, set[str] | None] = {
    "app": ALL, "data": ALL, "model": ALL, "train": ALL,
    "federation": {"rounds", "fraction", "parties_per_round", "eval_every"}, "simulation": {"threads"}, "run": ALL}
PARTITION_SECTIONS: dict[str, set[str] | None] = {
    "data": {"dataset", "data_dir", "parties", "partition", "alpha", "classes_per_party", "sizes", "party_size"}, "run": {"seed"}}


LONG_USAGE = {"simulate", "centralized", "server", "client", "partition", "tune"}  # too many flags for a usage line


class _Formatter(argparse.HelpFormatter):
    """Help on one line per flag where the terminal allows (a section fits a screen)."""

    def __init__(self, prog: str) -> None:
        width = min(140, max(80, _columns()))
        super().__init__(prog, max_help_position=34, width=width)


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


# ------------------------------------------------------------ config flags
def add_config_flags(p: argparse.ArgumentParser, sections: Mapping[str, set[str] | None] | Sequence[str] | None = None) -> None:
    """``--config FILE`` plus one flag per ``RunConfig`` field of ``sections`` (its description is the help).

    Args:
        p: the command's parser.
        sections: section → the keys offered (None: all of them), or a list of sections; None: all.
    """
    from pollen.config import SECTIONS, flag_fields

    if sections is not None and not isinstance(sections, Mapping):
        sections = {s: None for s in sections}
    p.add_argument("--config", metavar="FILE", help="TOML file with the run configuration (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (section, key) in flag_fields().items():
        if sections is not None:
            if section not in sections:
                continue
            keys = sections[section]
            if keys is not None and key not in keys:
                continue
        field = SECTIONS[section].model_fields[key]
        doc = ((SECTIONS[section].__doc__ or "").splitlines() or [""])[0].rstrip(".:") if section != "run" else ""
        title = f"[{section}] {doc}".rstrip()
        g = groups.setdefault(section, p.add_argument_group(title))
        dest = f"cfg__{section}__{key}"
        default = field.default
        helptext = field.description if "default" in (field.description or "") else f"{field.description} (default: {default})"
        names = [f"--{flag}"] + (["--scheme"] if flag == "partition" else [])
        if field.annotation is bool:
            g.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            g.add_argument(*names, dest=dest, default=None, metavar=key.upper(), help=helptext)


def explicit_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config flags given on the command line, as sections (``--rounds 5`` → ``{"federation": {"rounds": "5"}}``)."""
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg__") and value is not None:
            _, section, key = dest.split("__", 2)
            if isinstance(value, str) and value.lower() in ("none", "null"):
                value = None
            flags.setdefault(section, {})[key] = value
    return flags


def config_from_args(args: argparse.Namespace):
    """Merge the TOML file (if any) and the flags given into a validated ``RunConfig``."""
    from pollen.config import load_toml, make_config, merge

    data: dict[str, Any] = load_toml(args.config) if getattr(args, "config", None) else {}
    return make_config(merge(data, explicit_flags(args)))


def _print_runs(runs: Sequence[Path]) -> None:
    from pollen.telemetry.report import compare

    print(compare(list(runs)))


# ------------------------------------------------------------ simulate, centralized
def simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint; with --rounds N "
                   "a finished run trains on to round N")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name> (default: refuse)")
    p.add_argument("--with-centralized", action="store_true", help="also train on pooled data and compare in the report")
    from pollen.ui.watch import add_watch_flags

    add_watch_flags(p)
    add_config_flags(p, SIMULATE_SECTIONS)


def simulate_cmd(args: argparse.Namespace) -> int:
    from pollen.compose import resume_config
    from pollen.simulation import centralized, simulate

    from pollen.ui.watch import watching

    cfg = resume_config(Path(args.resume), explicit_flags(args)) if args.resume else config_from_args(args)
    with watching(args, cfg) as watch:  # --ui-port, --track
        result = simulate(cfg, resume=args.resume and Path(args.resume), overwrite=args.overwrite,
                          callbacks=watch.callbacks, control=watch.control)
    runs = [result.run_dir]
    if args.with_centralized:
        from pollen.config import load_toml, make_config

        cfg = make_config(load_toml(result.run_dir / "config.toml"))
        base = centralized(cfg, result.run_dir.parent / (result.run_dir.name + "-centralized"), overwrite=True)
        runs.append(base.run_dir)
        _attach_centralized(result.run_dir, base)
    _print_runs(runs)
    print(f"run written to {result.run_dir}/ (report.md, history.jsonl, model.safetensors, plot.svg)")
    return 0


def _attach_centralized(run_dir: Path, base) -> None:
    import json

    from pollen.telemetry.report import headline, write_report

    summ = json.loads((run_dir / "summary.json").read_text())
    base_summary = json.loads((base.run_dir / "summary.json").read_text())
    key = summ.get("primary_metric", "accuracy")
    value = headline(base.history, key)
    summ["centralized"] = {key: value, "epochs": base_summary.get("epochs"), "run": base.run_dir.name}
    (run_dir / "summary.json").write_text(json.dumps(summ, indent=2))
    write_report(run_dir)


def centralized_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the run already in runs/<name> (default: refuse)")
    add_config_flags(p, CENTRALIZED_SECTIONS)


def centralized_cmd(args: argparse.Namespace) -> int:
    from pollen.simulation import centralized

    result = centralized(config_from_args(args), overwrite=args.overwrite)
    _print_runs([result.run_dir])
    print(f"run written to {result.run_dir}/")
    return 0


# ------------------------------------------------------------ partition, report, compare
def partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (one partyN/ folder per party)")
    add_config_flags(p, PARTITION_SECTIONS)


def partition_cmd(args: argparse.Namespace) -> int:
    from pollen.data import format_histogram, label_histogram, write_shards
    from pollen.models.builtin import dataset, parts

    cfg = config_from_args(args)
    ds, cut = dataset(cfg), list(parts(cfg))
    out = write_shards(ds, cut, args.out, scheme=cfg.data.partition, seed=cfg.run.seed)
    print(format_histogram(label_histogram(ds.y_train, cut, ds.num_classes)))
    print(f"wrote {len(cut)} shards to {out}/party0 … party{len(cut) - 1}")
    return 0


def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument("--rounds", action="store_true", help="print the per-round table too")


def report_cmd(args: argparse.Namespace) -> int:
    from pollen.telemetry.report import write_report

    path = write_report(args.run_dir)
    text = path.read_text()
    print(text if args.rounds else text.split("## Rounds")[0].rstrip())
    return 0


def compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", help="run directories")


def compare_cmd(args: argparse.Namespace) -> int:
    _print_runs(args.run_dirs)
    return 0


# ------------------------------------------------------------ new, export, completion
def new_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="folder to create (its last part is the project's name)")
    p.add_argument("--force", action="store_true", help="write into an existing, non-empty folder")


def new_cmd(args: argparse.Namespace) -> int:
    from pollen.newproject import write_project

    folder = write_project(args.name, force=args.force)
    print(f"wrote {folder}/app.py, config.toml and README.md; try:\n  cd {folder}\n  pollen simulate --config config.toml")
    return 0


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (runs/<name>)")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript", help="file format (default: torchscript)")
    p.add_argument("--out", metavar="FILE", help="output file (default: <run>/model.pt or <run>/model.onnx)")


def export_cmd(args: argparse.Namespace) -> int:
    from pollen.export import export_model

    path = export_model(args.run_dir, args.format, args.out)
    print(f"wrote {path}")
    return 0


def completion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell; e.g. eval \"$(pollen completion bash)\" in ~/.bashrc")


def completion_cmd(args: argparse.Namespace) -> int:
    words = {name: sorted(_flags_of(name)) for name in COMMANDS}
    cases = "\n".join(f'        {name}) opts="{" ".join(flags)}" ;;' for name, flags in words.items())
    script = f"""# pollen {args.shell} completion (generated by 'pollen completion {args.shell}')
_pollen() {{
    local cur cmd opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=( $(compgen -W "{' '.join(COMMANDS)} --help --version" -- "$cur") )
        return
    fi
    case "$cmd" in
{cases}
        *) opts="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -f -- "$cur") )
    fi
}}
"""
    if args.shell == "zsh":
        script += "autoload -U +X bashcompinit && bashcompinit\n"
    script += "complete -F _pollen pollen\n"
    print(script, end="")
    return 0


def _flags_of(name: str) -> list[str]:
    p = argparse.ArgumentParser(add_help=True)
    COMMANDS[name].load()[0](p)
    out = []
    for action in p._actions:  # noqa: SLF001 - argparse has no public listing of options
        out += [o for o in action.option_strings if o.startswith("--")]
    return out


# ------------------------------------------------------------ the parser
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pollen`` argument parser: every command listed, the flags of ``command`` (all when None)."""
    from pollen import __version__

    parser = argparse.ArgumentParser(
        prog="pollen", formatter_class=_Formatter,
        description="Pollen: federated learning across parties whose data never leaves them.",
        epilog="Run 'pollen COMMAND --help' for the options of a command. Quick start: 'pollen simulate', "
               "or 'pollen new myproject' for your own model and data.",
    )
    parser.add_argument("--version", action="version", version=f"pollen {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help[0].upper() + cmd.help[1:] + ".",
                           formatter_class=_Formatter,
                           usage=f"pollen {name} [OPTIONS]" if name in LONG_USAGE else None)
        if command is None or name == command:
            cmd.load()[0](p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pollen`` command."""
    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    handler = COMMANDS[args.command].load()[1]
    try:
        return handler(args)
    except PollenError as exc:
        if args.verbose:
            raise
        print(f"pollen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full, read-only or unwritable disk: one line (pollen.server.shutdown)
        from pollen.server.shutdown import disk_error, is_disk_error

        if args.verbose or not is_disk_error(exc):
            raise
        print(f"pollen {args.command}: error: {disk_error(exc, exc.filename or 'the run folder', 'a file')}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        import signal

        where, signum = getattr(exc, "run_dir", None), getattr(exc, "signum", None)
        how = f"stopped by {signal.Signals(signum).name}" if signum else "interrupted"
        if where is not None:
            print(f"\n{how}: every finished round is saved in {where}/; continue with "
                  f"'pollen {args.command} --resume {where}'", file=sys.stderr)
        else:
            print(f"\n{how}", file=sys.stderr)
        return 128 + signum if signum else 130


if __name__ == "__main__":
    sys.exit(main())
