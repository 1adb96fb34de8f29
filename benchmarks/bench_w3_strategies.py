"""W3 of BENCHMARKS.md: every strategy on non-IID Fashion-MNIST, one table.

Splits: Dirichlet α = 0.1 (``dir0.1``) and 2 classes per party (``shards``); 100 parties of ~600
examples, 10 sampled per round, FedAvg-paper CNN, SGD lr 0.05, batch 32, 1 local epoch, the
server's test accuracy after every round. Strategy hyper-parameters are Pollen's defaults (no
tuning): FedAvgM β = 0.9; FedProx μ = 0.01; FedAdam/FedYogi/FedAdagrad η = 0.01, β₁ = 0.9,
β₂ = 0.99, τ = 1e-3; SCAFFOLD η_g = 1. FedPer runs with a 10 % held-out split per party (its
personalised accuracy needs one); FedBN is not applicable (this CNN has no BatchNorm).

Each (strategy, split, seed) is one ``pollen.simulate`` run in a worker process (``--jobs``);
results are appended to ``--results`` (JSON lines) so an interrupted grid resumes where it
stopped, and the Markdown table is rendered from all lines there.

    python benchmarks/bench_w3_strategies.py                       # the full grid: 3 seeds, 30 rounds
    python benchmarks/bench_w3_strategies.py --seeds 0 --rounds 20 --jobs 2   # a reduced grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

STRATEGIES = ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova", "fedper"]
SPLITS = {"dir0.1": {"partition": "dirichlet", "alpha": 0.1}, "shards": {"partition": "shards", "classes_per_party": 2}}
TARGET = 0.80
COLLAPSED = 0.2  # a final accuracy below this (10 classes: chance is 0.1) counts as a collapsed run


def run_one(strategy: str, split: str, seed: int, rounds: int, runs_dir: str, threads: int) -> dict:
    """One simulation; its headline numbers."""
    import torch

    from pollen.config import make_config
    from pollen.simulation import simulate

    torch.set_num_threads(threads)
    data = {"dataset": "fmnist", "parties": 100, "holdout": 0.1 if strategy == "fedper" else 0.0, **SPLITS[split]}
    cfg = make_config({
        "data": data, "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": rounds, "parties_per_round": 10},
        "strategy": {"name": strategy},
        "simulation": {"threads": threads},
        "run": {"name": f"{strategy}-{split}-s{seed}-r{rounds}", "runs_dir": runs_dir, "seed": seed, "progress": False,
                "device": "cpu"},
    })
    t0 = time.perf_counter()
    hist = simulate(cfg, overwrite=True).history  # a run cut off by an interrupted grid is run again from round 1
    wall = time.perf_counter() - t0
    acc = [r.get("accuracy") for r in hist]
    reached = next((r["round"] for r in hist if (r.get("accuracy") or 0) >= TARGET), None)
    return {"strategy": strategy, "split": split, "seed": seed, "rounds": rounds, "final_accuracy": acc[-1],
            "best_accuracy": max(a for a in acc if a is not None), "rounds_to_80": reached,
            "fed_accuracy": hist[-1].get("fed_accuracy"), "wall_s": wall,
            "median_round_s": statistics.median(r["seconds"] for r in hist), "accuracy_by_round": acc}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) // 2**20 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores, {mem} GiB RAM, {cpu}, Python {platform.python_version()}"


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(rows: list[dict], rounds: int) -> str:
    out = ["| strategy | split | seeds | final accuracy % (mean ± std) | best % | rounds to 80 % | collapsed | "
           "FedPer personalised % | median s/round |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split in SPLITS:
        for s in STRATEGIES:
            mine = [r for r in rows if r["strategy"] == s and r["split"] == split and r["rounds"] == rounds]
            if not mine:
                continue
            reach = [r["rounds_to_80"] for r in mine]
            reach_txt = ", ".join("not reached" if x is None else str(x) for x in reach)
            fed = [r["fed_accuracy"] for r in mine if r["fed_accuracy"] is not None]
            out.append(f"| {s} | {split} | {len(mine)} | {fmt([r['final_accuracy'] for r in mine])} | "
                       f"{fmt([r['best_accuracy'] for r in mine])} | {reach_txt} | "
                       f"{sum(r['final_accuracy'] < COLLAPSED for r in mine)} of {len(mine)} | {fmt(fed) if s == 'fedper' else ''} | "
                       f"{statistics.median(r['median_round_s'] for r in mine):.2f} |")
    return "\n".join(out)


def partial_rows(a: argparse.Namespace, at: int) -> list[dict]:
    """Rows for the grid's runs that reached round ``at``, read from their history files."""
    rows = []
    for seed in a.seeds.split(","):
        for split in a.splits.split(","):
            for s in a.strategies.split(","):
                path = Path(a.runs_dir) / f"{s}-{split}-s{seed}-r{a.rounds}" / "history.jsonl"
                hist = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
                hist = [r for r in hist if r["round"] <= at]
                if len(hist) < at:
                    continue
                acc = [r.get("accuracy") for r in hist]
                rows.append({"strategy": s, "split": split, "seed": int(seed), "rounds": at, "final_accuracy": acc[-1],
                             "best_accuracy": max(acc), "fed_accuracy": hist[-1].get("fed_accuracy"),
                             "rounds_to_80": next((r["round"] for r in hist if r["accuracy"] >= TARGET), None),
                             "median_round_s": statistics.median(r["seconds"] for r in hist)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads torch threads)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="/tmp/pollen-w3-runs")
    p.add_argument("--results", default="benchmarks/results/w3-strategies.jsonl")
    p.add_argument("--table", action="store_true", help="only render the table from --results")
    p.add_argument("--at-round", type=int, default=None,
                   help="render a table of the runs' state at this round from their history files in --runs-dir "
                        "(for runs cut short; nothing is trained)")
    a = p.parse_args()
    if a.at_round is not None:
        rows = partial_rows(a, a.at_round)
        print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; {machine()}\n")
        print(table(rows, a.at_round))
        return
    results = Path(a.results)
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if not a.table:
        grid = [(s, sp, int(seed)) for seed in a.seeds.split(",") for sp in a.splits.split(",") for s in a.strategies.split(",")]
        have = {(r["strategy"], r["split"], r["seed"], r["rounds"]) for r in done}
        todo = [g for g in grid if (*g, a.rounds) not in have]
        print(f"{len(todo)} runs to do ({len(grid) - len(todo)} already in {results})", flush=True)
        with ProcessPoolExecutor(a.jobs) as pool:
            futures = [pool.submit(run_one, s, sp, seed, a.rounds, a.runs_dir, a.threads) for s, sp, seed in todo]
            for fut in as_completed(futures):  # record each run as it ends: a cut-off grid loses only what was running
                row = fut.result()
                done.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{row['strategy']:10s} {row['split']:7s} seed {row['seed']}: final {row['final_accuracy']:.4f} "
                      f"best {row['best_accuracy']:.4f} to80 {row['rounds_to_80']} ({row['wall_s']:.0f} s)", flush=True)
    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; {machine()}")
    print(f"git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}\n")
    print(table(done, a.rounds))


if __name__ == "__main__":
    main()
