"""The robustness table of issue 4: each attack × each aggregator on Fashion-MNIST with 100
parties, 20 % of them malicious, Dirichlet α = 0.5, 50 rounds.

Every cell is one ``pollen.simulation.simulate`` run in its own subprocess (``--jobs`` at a time);
each finished cell is appended to ``benchmarks/results/robustness.jsonl`` (so a long grid can be
run in pieces and resumed: cells already there are skipped), and the table in
``benchmarks/results/robustness_table.md`` is rewritten from all cells with the settings of the
current invocation.

    # the full grid (6 attacks + no attack, 7 aggregators, FedAvg-paper CNN, all 100 parties per round)
    python benchmarks/bench_robustness.py

    # what fitted in the compute time of the first run (see benchmarks/results/robustness.md)
    python benchmarks/bench_robustness.py --attacks gaussian,alie \\
        --aggregators fedavg,median,trimmed_mean,multikrum,bulyan --model mlp --parties-per-round 20 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ATTACKS = ("none", "gaussian", "alie", "signflip", "labelflip", "ipm", "scaling")
AGGREGATORS = ("fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "normbound")
# Published reference for this setting (FMNIST accuracy under Gaussian / ALIE), as quoted in issue 4.
REFERENCE = {"fedavg": (0.25, 0.17), "median": (0.66, 0.65), "trimmed_mean": (0.69, 0.54),
             "multikrum": (0.74, 0.65), "bulyan": (0.71, 0.72)}
RESULTS = Path(__file__).resolve().parent / "results"


def cell_config(args: argparse.Namespace, attack: str, aggregator: str, runs_dir: str) -> dict:
    """The run config of one cell."""
    return {
        "data": {"dataset": "fmnist", "parties": args.parties, "partition": "dirichlet", "alpha": args.alpha,
                 "holdout": 0.0},
        "model": {"model": args.model},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        # without --parties-per-round every party trains every round (fraction 1; Pollen's default is 10)
        "federation": {"rounds": args.rounds, "parties_per_round": args.parties_per_round,
                       **({"fraction": 1.0} if args.parties_per_round is None else {}), "eval_every": args.eval_every},
        "strategy": {"name": aggregator, **({"byzantine_f": args.byzantine_f} if args.byzantine_f is not None else {})},
        "attack": ({"malicious_fraction": args.malicious_fraction, "attack": attack} if attack != "none" else {}),
        "simulation": {"threads": args.threads},
        "run": {"name": f"{attack}-{aggregator}-s{args.seed}", "runs_dir": runs_dir, "seed": args.seed,
                "progress": False, "device": "cpu"},
    }


def run_cell(cfg_dict: dict) -> dict:
    """Run one cell in this process and return its row."""
    import torch

    from pollen.config import make_config
    from pollen.simulation.run import simulate

    torch.set_num_threads(cfg_dict["simulation"]["threads"])
    cfg = make_config(cfg_dict)
    t0 = time.perf_counter()
    result = simulate(cfg)
    evals = [r for r in result.history if r.get("accuracy") is not None]
    return {
        "attack": cfg.attack.attack, "aggregator": cfg.strategy.name, "seed": cfg.run.seed,
        "final_accuracy": evals[-1]["accuracy"] if evals else None,
        "best_accuracy": max((r["accuracy"] for r in evals), default=None),
        "curve": {r["round"]: round(r["accuracy"], 4) for r in evals},
        "malicious_share_mean": sum(r.get("party_metrics", {}).get("malicious", 0.0) for r in result.history) / len(result.history),
        "wall_seconds": time.perf_counter() - t0, "config": cfg.to_dict(),
    }


def machine() -> str:
    """Cores, RAM and CPU model."""
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return f"{os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB RAM, {model}"


def key(row: dict) -> tuple:
    c = row["config"]
    return (row["attack"], row["aggregator"], row["seed"], c["model"].get("model"), c["federation"]["rounds"],
            c["federation"].get("parties_per_round"), c["data"]["parties"], c["strategy"].get("byzantine_f"))


def settings_key(args: argparse.Namespace, attack: str, aggregator: str) -> tuple:
    return (attack, aggregator, args.seed, args.model, args.rounds, args.parties_per_round, args.parties,
            args.byzantine_f if aggregator != "fedavg" else None)


def load_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def render_table(args: argparse.Namespace, rows: list[dict]) -> str:
    """The attack × aggregator table for the current settings (— where a cell has not run)."""
    mine = {(r["attack"], r["aggregator"]): r for r in rows
            if key(r)[2:7] == settings_key(args, "", "")[2:7]
            and key(r)[7] == (args.byzantine_f if r["aggregator"] != "fedavg" else None)}
    attacks = [a for a in ATTACKS if any(k[0] == a for k in mine)]
    aggs = [g for g in AGGREGATORS if any(k[1] == g for k in mine)]
    def grid(cell) -> list[str]:  # one row per attack, one column per aggregator
        return (["| attack | " + " | ".join(aggs) + " |", "| --- |" + " --- |" * len(aggs)]
                + [f"| {a} | " + " | ".join(cell(a, mine.get((a, g)), g) for g in aggs) + " |" for a in attacks])

    def final(a: str, r: dict | None, g: str) -> str:
        ref = REFERENCE.get(g, (None, None))[("gaussian", "alie").index(a)] if a in ("gaussian", "alie") else None
        txt = f"{r['final_accuracy']:.3f}" if r and r["final_accuracy"] is not None else "—"
        return txt + (f" (ref {ref:.2f})" if ref is not None else "")

    def last_three(a: str, r: dict | None, g: str) -> str:
        last = [v for _, v in sorted((int(k), v) for k, v in r["curve"].items())][-3:] if r else []
        return f"{sum(last) / len(last):.3f}" if last else "—"

    lines = [f"Settings: {args.parties} parties, {args.malicious_fraction:.0%} malicious, Dirichlet α = {args.alpha}, "
             f"{args.rounds} rounds, {args.parties_per_round or args.parties} parties per round, model "
             f"{args.model}, seed {args.seed}, byzantine_f "
             f"{args.byzantine_f if args.byzantine_f is not None else 'round(0.2 × parties per round)'}. "
             "Final test accuracy (10k test set) after the last round.", "", *grid(final),
             "", "Mean test accuracy over the last three evaluations (rounds 40, 45, 50 with the defaults): "
             "one round's accuracy swings when an attack gets through in that round.", "", *grid(last_three)]
    secs = [r["wall_seconds"] for r in mine.values()]
    lines += ["", f"Cells run: {len(mine)}; wall seconds per cell: min {min(secs):.0f}, max {max(secs):.0f}."
              if secs else "No cell has run with these settings."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--aggregators", default=",".join(AGGREGATORS))
    p.add_argument("--model", default="fedavg_cnn", help="fedavg_cnn (BENCHMARKS.md default) or mlp")
    p.add_argument("--parties", type=int, default=100)
    p.add_argument("--parties-per-round", type=int, default=None, help="default: all parties every round")
    p.add_argument("--malicious-fraction", type=float, default=0.2)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--byzantine-f", type=int, default=None, help="f the robust rules assume (default: expected count)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each in its own process)")
    p.add_argument("--out", default=str(RESULTS / "robustness.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the table of the stored cells with these settings")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: JSON config of one cell
    args = p.parse_args()
    if args.table:
        print(render_table(args, load_rows(Path(args.out))))
        return
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in load_rows(out)}
    todo = [(a, g) for a in args.attacks.split(",") for g in args.aggregators.split(",")
            if settings_key(args, a, g) not in done]
    runs_dir = tempfile.mkdtemp(prefix="pollen-robust-")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}; {len(todo)} cells to run", flush=True)

    def one(cell: tuple[str, str]) -> None:
        cfg = cell_config(args, *cell, runs_dir)
        proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cfg)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{cell}: failed\n{proc.stderr[-2000:]}", flush=True)
            return
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        row["machine"] = machine()
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{cell}: accuracy {row['final_accuracy']:.4f} in {row['wall_seconds']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, todo))
    out.with_name("robustness_table.md").write_text(render_table(args, load_rows(out)))


if __name__ == "__main__":
    main()
