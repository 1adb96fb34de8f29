"""W3 with tuned hyper-parameters: every strategy gets the same tuning budget, then reruns W3.

Tuning (``pollen.tuning.tune``, Optuna TPE + Hyperband on the per-round metric): W3's federation
(Fashion-MNIST, 100 parties, Dirichlet α = 0.1, 10 sampled per round, FedAvg CNN, batch 32, 1 local
epoch) with seed 0, each party holding out 10 % of its data; the objective is the parties'
held-out accuracy (``fed_accuracy``), never the 10k test set, measured every 2 rounds of a
``--tune-rounds`` run. Budget per strategy: ``--trials`` trials of at most ``--tune-rounds``
rounds (the same for every strategy; pruned trials stop early). Space: the local lr for all, plus
the strategy's own knob (server lr, server momentum, μ).

Rerun: W3 exactly as ``bench_w3_strategies.py`` runs it (no held-out split, 30 rounds, test
accuracy on the 10k test set) with the best trial's settings, for ``--seeds``.

Everything resumes: each study is a SQLite file under ``--work-dir``; each finished rerun is a
line of ``--results``.

    python benchmarks/bench_w3_tuned.py --strategies fedavg,fedadagrad --trials 4 --tune-rounds 10 --seeds 0
    python benchmarks/bench_w3_tuned.py --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_w3_strategies import TARGET, machine

STRATEGIES = ["fedavg", "fedadagrad", "fedadam", "fedprox", "fedavgm", "fedyogi", "scaffold", "fednova", "fedper"]
LR = {"lr": {"low": 0.005, "high": 0.2, "log": True}}
SPACES = {
    "fedavg": LR, "fednova": LR, "fedper": LR,
    "fedavgm": {**LR, "server_momentum": {"low": 0.5, "high": 0.95}},
    "fedprox": {**LR, "proximal_mu": {"low": 0.001, "high": 1.0, "log": True}},
    "fedadam": {**LR, "server_lr": {"low": 0.001, "high": 0.1, "log": True}},
    "fedyogi": {**LR, "server_lr": {"low": 0.001, "high": 0.1, "log": True}},
    "fedadagrad": {**LR, "server_lr": {"low": 0.001, "high": 0.1, "log": True}},
    "scaffold": {**LR, "server_lr": {"low": 0.1, "high": 1.0, "log": True}},
}
UNTUNED = {"lr": 0.05}


def w3(strategy: str, rounds: int, seed: int, runs_dir: str, holdout: float, threads: int) -> dict:
    return {"data": {"dataset": "fmnist", "parties": 100, "partition": "dirichlet", "alpha": 0.1, "holdout": holdout},
            "model": {"model": "fedavg_cnn"}, "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
            "federation": {"rounds": rounds, "parties_per_round": 10},
            "strategy": {"name": strategy}, "simulation": {"threads": threads},
            "run": {"runs_dir": runs_dir, "seed": seed, "progress": False, "device": "cpu"}}


def tune_strategy(s: str, a: argparse.Namespace) -> dict:
    from pollen.tuning import tune

    cfg = w3(s, a.tune_rounds, 0, f"{a.work_dir}/runs", 0.1, a.threads)
    cfg["federation"].update(fed_eval_every=2, eval_every=a.tune_rounds)  # the test set only after the last round
    t0 = time.perf_counter()
    result = tune(cfg, space=SPACES[s], trials=a.trials, out_dir=Path(a.work_dir) / f"tune-{s}", metric="fed_accuracy",
                  pruner="hyperband", min_rounds=2, seed=0,
                  on_trial=lambda t: print(f"  {s} trial {t.number}: {t.state.lower()} after {t.rounds} rounds, "
                                           f"fed_accuracy {t.value} {t.params}", flush=True))
    return {"best_params": result.best_params, "best_fed_accuracy": result.best_value,
            "trials": [{"number": t.number, "state": t.state, "params": t.params, "value": t.value, "rounds": t.rounds}
                       for t in result.trials],
            "tuning_rounds_run": sum(t.rounds for t in result.trials), "tuning_wall_s": time.perf_counter() - t0}


def rerun(s: str, params: dict, seed: int, a: argparse.Namespace) -> dict:
    from pollen.simulation import simulate

    cfg = w3(s, a.rounds, seed, f"{a.work_dir}/reruns", 0.0, a.threads)
    t0 = time.perf_counter()
    hist = simulate(cfg, name=f"{s}-s{seed}-tuned", overwrite=True, **params).history
    acc = [r.get("accuracy") for r in hist]
    return {"final_accuracy": acc[-1], "best_accuracy": max(x for x in acc if x is not None),
            "rounds_to_80": next((r["round"] for r in hist if (r.get("accuracy") or 0) >= TARGET), None),
            "wall_s": time.perf_counter() - t0, "accuracy_by_round": acc}


def table(rows: list[dict], untuned: list[dict]) -> str:
    out = ["| strategy | tuned settings (seed-0 study) | tuning budget: trials / rounds run | seeds | tuned final % | "
           "untuned final % (same seeds) | tuned − untuned, paired by seed (points) | rounds to 80 % (tuned) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == s and r.get("kind") == "rerun"]
        study = next((r for r in rows if r["strategy"] == s and r.get("kind") == "tuning"), None)
        if study is None:
            continue
        seeds = sorted(r["seed"] for r in mine)
        base = {r["seed"]: r["final_accuracy"] for r in untuned if r["strategy"] == s and r["split"] == "dir0.1"}
        diffs = [100 * (r["final_accuracy"] - base[r["seed"]]) for r in mine if r["seed"] in base]
        fmt = lambda v: "—" if not v else (f"{100 * statistics.fmean(v):.1f}" + (f" ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else ""))  # noqa: E731
        settings = ", ".join(f"{k} = {v:.3g}" for k, v in study["best_params"].items())
        out.append(f"| {s} | {settings} | {len(study['trials'])} / {study['tuning_rounds_run']} | "
                   f"{','.join(map(str, seeds)) or '—'} | {fmt([r['final_accuracy'] for r in mine])} | "
                   f"{fmt([base[x] for x in seeds if x in base])} | "
                   f"{', '.join(f'{d:+.1f}' for d in diffs) or '—'} | "
                   f"{', '.join('not reached' if r['rounds_to_80'] is None else str(r['rounds_to_80']) for r in mine) or '—'} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--trials", type=int, default=4, help="tuning budget per strategy: trials (the same for all)")
    p.add_argument("--tune-rounds", type=int, default=10, help="rounds of an unpruned tuning trial")
    p.add_argument("--rounds", type=int, default=30, help="rounds of the W3 rerun")
    p.add_argument("--seeds", default="0", help="seeds of the W3 rerun")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default="/tmp/pollen-w3-tuned")
    p.add_argument("--results", default="benchmarks/results/w3-tuned.jsonl")
    p.add_argument("--untuned", default="benchmarks/results/w3-strategies.jsonl")
    p.add_argument("--table", action="store_true", help="only render the table from --results")
    a = p.parse_args()
    results = Path(a.results)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    untuned = [json.loads(line) for line in Path(a.untuned).read_text().splitlines()]
    stamp = lambda: {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),  # noqa: E731
                     "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}

    def record(row: dict) -> None:
        rows.append(row)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if not a.table:
        for s in a.strategies.split(","):
            budget = {"trials": a.trials, "tune_rounds": a.tune_rounds}
            study = next((r for r in rows if r["strategy"] == s and r.get("kind") == "tuning" and r["budget"] == budget), None)
            if study is None:
                print(f"tuning {s}: {a.trials} trials of up to {a.tune_rounds} rounds", flush=True)
                study = {"kind": "tuning", "strategy": s, "budget": budget, **tune_strategy(s, a), **stamp()}
                record(study)
            for seed in (int(x) for x in a.seeds.split(",")):
                if any(r["strategy"] == s and r.get("kind") == "rerun" and r["seed"] == seed and r["budget"] == budget
                       and r["rounds"] == a.rounds for r in rows):
                    continue
                print(f"rerun {s} seed {seed} with {study['best_params']}", flush=True)
                got = rerun(s, study["best_params"], seed, a)
                record({"kind": "rerun", "strategy": s, "seed": seed, "rounds": a.rounds, "budget": budget,
                        "params": study["best_params"], **got, **stamp()})
                print(f"  final {got['final_accuracy']:.4f} ({got['wall_s']:.0f} s)", flush=True)
    dates = sorted(r["date"] for r in rows if "date" in r)
    if dates:  # when and where the rows ran (not when the table was printed)
        print(f"\nruns {dates[0]} – {dates[-1]} on: " + "; ".join(sorted({r['machine'] for r in rows if 'machine' in r})) + "\n")
    print(table(rows, untuned))


if __name__ == "__main__":
    main()
