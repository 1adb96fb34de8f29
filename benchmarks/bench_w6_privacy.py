"""W6 of BENCHMARKS.md: what privacy costs and what it buys, in one table.

Rows: centralized training; FedAvg (W1: Fashion-MNIST, 100 IID parties of 600, 10 per round,
30 rounds); FedAvg + DP-SGD at ε = 8, 4, 2 (δ = 1e-5, per party, noise calibrated for the whole
planned run); party-level DP (central noise, fixed clip norm) at ε = 8, 4, 2 with 1,000 parties
(60 examples each, 100 per round). Per row: test accuracy, rounds, ε, bytes moved, and the AUC of
a loss-threshold membership-inference attack (Yeom et al. 2018, ``pollen.attacks.membership``) on
the final model: members drawn from the training data of parties that trained, non-members from
the test set.

Each row runs in its own subprocess and appends one JSON line to ``--out``; ``--report`` turns
the lines into the markdown table.

    python benchmarks/bench_w6_privacy.py --rows all --out benchmarks/results/w6-privacy.jsonl
    python benchmarks/bench_w6_privacy.py --report benchmarks/results/w6-privacy.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ["centralized", "fedavg", "dpsgd-8", "dpsgd-4", "dpsgd-2", "clientdp-8", "clientdp-4", "clientdp-2"]
EXTRA_ROWS = ["clientclip"]  # diagnostics: run with --rows clientclip
DELTA = 1e-5


def row_config(row: str, rounds: int, runs_dir: str, threads: int | None = None) -> dict:
    """The run configuration of one row (a nested dict for ``make_config``)."""
    cfg = {
        "data": {"dataset": "fmnist", "parties": 100, "partition": "iid", "holdout": 0.0},
        "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": rounds, "parties_per_round": 10, "eval_every": 10},
        "run": {"name": row, "runs_dir": runs_dir, "progress": False, "seed": 0, "device": "cpu"},
        "simulation": {"threads": threads},
    }
    kind, _, eps = row.partition("-")  # e.g. dpsgd-8
    if kind == "dpsgd":
        cfg["privacy"] = {"dp_sgd": True, "target_epsilon": float(eps), "delta": DELTA, "max_grad_norm": 1.0}
    elif kind == "clientclip":  # the client-DP setting with clipping and no noise (ε = ∞)
        cfg["data"]["parties"] = 1000
        cfg["federation"]["parties_per_round"] = 100
        cfg["privacy"] = {"client_dp": "central", "client_noise_multiplier": 0.0, "delta": DELTA, "clip_norm": 0.1}
    elif kind == "clientdp":
        cfg["data"]["parties"] = 1000
        cfg["federation"]["parties_per_round"] = 100
        cfg["privacy"] = {"client_dp": "central", "target_epsilon": float(eps), "delta": DELTA, "clip_norm": 0.1}
    return cfg


def membership_auc(cfg, state, history, members: int, seed: int = 0) -> dict:
    """Loss-threshold MIA on the final model: AUC (with a bootstrap CI) and TPR at 0.1 % FPR."""
    import numpy as np
    import torch

    from pollen.attacks.membership import evaluate_scores, loss_threshold_scores
    from pollen.client.trainer import load_numpy_state
    from pollen.compose import assemble
    from pollen.models import builtin

    assembly = assemble(cfg)
    ds, parts = builtin.dataset(assembly.cfg), builtin.parts(assembly.cfg)
    trained = sorted({p for line in history for p in line.get("parties", []) if p != "pooled"}, key=int)
    idx = np.concatenate([parts[int(p)] for p in trained]) if trained else np.concatenate(parts)
    rng = np.random.default_rng(seed)
    mem = torch.from_numpy(np.sort(rng.choice(idx, min(members, len(idx)), replace=False)))
    non = torch.from_numpy(np.sort(rng.choice(len(ds.y_test), members, replace=False)))
    model = assembly.new_model()  # the run's architecture (GroupNorm under DP-SGD)
    load_numpy_state(model, state, strict=False)
    model.eval()
    s_in = loss_threshold_scores(model, torch.from_numpy(ds.x_train)[mem], torch.from_numpy(ds.y_train)[mem])
    s_out = loss_threshold_scores(model, torch.from_numpy(ds.x_test)[non], torch.from_numpy(ds.y_test)[non])
    res = evaluate_scores("loss-threshold", s_in, s_out, rng)
    return {"mia_auc": res.auc.value, "mia_auc_ci": [res.auc.low, res.auc.high],
            "mia_tpr_at_0.1%fpr": res.tpr_low_fpr.value, "mia_members": res.members}


def run_row(row: str, rounds: int, members: int, threads: int | None = None) -> dict:
    """Train one row and measure it."""
    import torch

    from pollen.config import make_config
    from pollen.simulation import centralized, simulate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(row_config(row, rounds, tmp, threads))
        t0 = time.perf_counter()
        result = centralized(cfg) if row == "centralized" else simulate(cfg)
        wall = time.perf_counter() - t0
        hist = result.history
        last = hist[-1]
        out = {
            "row": row, "rounds": len(hist), "accuracy": last.get("accuracy"),
            "accuracy_by_round": {h["round"]: h["accuracy"] for h in hist if h.get("accuracy") is not None},
            "epsilon": last.get("epsilon"), "delta": DELTA if "-" in row else None,  # clientclip: no noise, ε = ∞
            # a round's "epsilon" is the largest among the parties of that round; the run's worst party
            # is the largest over all rounds (each party's ε only grows)
            "epsilon_run_max": max((h["epsilon"] for h in hist if h.get("epsilon") is not None), default=None),
            "noise_multiplier": last.get("noise_multiplier"), "clip_norm": last.get("clip_norm"),
            "bytes_up": sum(h.get("bytes_up", 0) for h in hist), "bytes_down": sum(h.get("bytes_down", 0) for h in hist),
            "parties_failed": sum(len(h.get("parties_failed", [])) for h in hist),
            "wall_seconds": wall, "threads": torch.get_num_threads(),
        }
        out.update(membership_auc(cfg, result.state, hist, members))
    return out


def report(path: Path) -> str:
    """The markdown table of the JSON lines in ``path``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| row | test accuracy | rounds | ε (δ = 1e-5), last round's parties | noise multiplier | bytes up + down | MIA AUC [95 % CI] | MIA TPR @ 0.1 % FPR | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        if r.get("epsilon_run_max") is not None and r["epsilon_run_max"] != r["epsilon"]:
            eps += f" (worst party of the run: {r['epsilon_run_max']:.2f})"
        nm = "—" if r.get("noise_multiplier") is None else f"{r['noise_multiplier']:.3g}"
        lo, hi = r["mia_auc_ci"]
        lines.append(f"| {r['row']} | {100 * r['accuracy']:.2f} % | {r['rounds']} | {eps} | {nm} | "
                     f"{(r['bytes_up'] + r['bytes_down']) / 1e6:.0f} MB | {r['mia_auc']:.4f} [{lo:.4f}, {hi:.4f}] | "
                     f"{r['mia_tpr_at_0.1%fpr']:.4f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="all", help=f"comma-separated rows or 'all' ({', '.join(ROWS)})")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--members", type=int, default=5000, help="members and non-members per MIA")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per row (default: cores)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/w6-privacy.jsonl"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one row in this process, print its JSON
    ap.add_argument("--report", type=Path, help="print the table of a JSONL file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.one:
        print("RESULT " + json.dumps(run_row(args.one, args.rounds, args.members, args.threads)), flush=True)
        return
    rows = ROWS if args.rows == "all" else args.rows.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        proc = subprocess.run([sys.executable, __file__, "--one", row, "--rounds", str(args.rounds),
                               "--members", str(args.members)] + (["--threads", str(args.threads)] if args.threads else []), capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"{row}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        with args.out.open("a") as f:
            f.write(found[-1][len("RESULT "):] + "\n")
        print(f"{row}: done", flush=True)


if __name__ == "__main__":
    main()
