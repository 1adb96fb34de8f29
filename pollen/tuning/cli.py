"""``pollen tune``: federated hyper-parameter tuning from the command line (docs/tuning.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pollen.cli import SIMULATE_SECTIONS, add_config_flags, config_from_args


def tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, metavar="FILE",
                   help="search space TOML, e.g. lr = { low = 0.001, high = 1.0, log = true } (docs/tuning.md)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="trials the study holds in the end; a resumed study runs only the missing ones")
    p.add_argument("--out", metavar="DIR", help="tuning folder: study.db, results.md, plot.png, best.toml, runs/ "
                   "(default: <runs-dir>/tune-<name or app>); the same folder resumes the study")
    p.add_argument("--metric", help="objective: a history key (default: the app's primary metric; the parties' "
                   "fed_<metric> when the coordinator has no test data)")
    p.add_argument("--direction", choices=("maximize", "minimize"), help="default: from the metric")
    p.add_argument("--pruner", choices=("hyperband", "halving", "median", "none"), default="hyperband",
                   help="stop trials that fall behind on the per-round metric (default: hyperband)")
    p.add_argument("--min-rounds", type=int, default=1, metavar="R",
                   help="rounds every trial runs before it may be pruned (default: 1)")
    p.add_argument("--tune-seed", type=int, default=0, metavar="S", help="seed of the TPE sampler (default: 0)")
    p.add_argument("--max-epsilon", type=float, metavar="EPS",
                   help="with DP: total privacy budget of the whole tuning; no trial starts past it")
    add_config_flags(p, SIMULATE_SECTIONS)


def tune_cmd(args: argparse.Namespace) -> int:
    from pollen.errors import ConfigError
    from pollen.tuning.study import tune

    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    cfg = config_from_args(args)

    def show(t) -> None:  # one line per finished trial: tuning is long work
        value = "—" if t.value is None else f"{t.value:.4g}"
        eps = "" if t.epsilon is None else f", ε {t.epsilon:.3g}"
        print(f"trial {t.number}: {t.state.lower()} after {t.rounds} rounds, {value}{eps}  {t.params}",
              file=sys.stderr, flush=True)

    try:
        result = tune(cfg, space=args.space, trials=args.trials, out_dir=args.out, metric=args.metric,
                      direction=args.direction, pruner=args.pruner, min_rounds=args.min_rounds, seed=args.tune_seed,
                      max_epsilon=args.max_epsilon, on_trial=show)
    except KeyboardInterrupt:
        out = args.out or "the same --out folder"
        print(f"\ninterrupted: finished trials are saved in the study; run the same command again (with {out}) "
              "to resume", file=sys.stderr)
        return 130
    print((result.out_dir / "results.md").read_text())
    eps = "" if result.total_epsilon is None else f"; privacy spent by all trials: ε = {result.total_epsilon:.3g}"
    print(f"best config written to {Path(result.out_dir) / 'best.toml'} (pollen simulate --config "
          f"{Path(result.out_dir) / 'best.toml'}){eps}")
    return 0
