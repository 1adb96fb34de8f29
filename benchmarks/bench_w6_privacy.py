"""W6 of BENCHMARKS.md: what privacy costs, what it buys, and what one run can measure of it.

Rows (every DP row runs Pollen's default DP recipe: only the ε is given):

- ``centralized``: the pooled training data, the same passes as FedAvg (no audit: not federated).
- ``fedavg``: W1 (Fashion-MNIST, 100 IID parties of 600, 10 per round, the FedAvg CNN, SGD lr 0.05,
  batch 32, one epoch).
- ``dpsgd-8|4|2``: W1's federation with ``--dp-sgd --target-epsilon ε --delta 1e-5``; ε is each
  party's record-level ε for the whole planned run (the worst party's).
- ``clientdp-8|4|2``: 1,000 IID parties of 60, ``--client-dp central --target-epsilon ε``.
- ``distdp-8``: as ``clientdp-8`` with ``--client-dp distributed --secagg`` (Skellam noise added by
  the parties inside SecAgg+'s ring, 20 neighbours per party; adaptive clipping with the count summed
  securely, as the recipe does by default).
- ``ftrl-8``: as ``clientdp-8`` with ``--client-dp ftrl`` (DP-FTRL: tree aggregation, no sampling).

Every federated row is audited in the same run (Steinke, Nasr, Jagielski 2023; ``--audit-canaries``:
1,000 canary records for record-level rows, 100 canary parties for party-level ones): its
empirical lower bound on ε stands beside the accountant's ε. A loss-threshold membership attack
(Yeom et al. 2018) on the final model is kept from the earlier table.

Each (row, seed) runs in its own subprocess and its JSON line is appended to ``--out`` as soon as
it ends; a rerun skips what is there, so the benchmark can be stopped and resumed. Seeds run in
order (every row of seed 0 first).

    python benchmarks/bench_w6_privacy.py --seeds 0,1,2                  # resumes from --out
    python benchmarks/bench_w6_privacy.py --report benchmarks/results/w6-privacy-v3.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ["fedavg", "dpsgd-8", "clientdp-8", "distdp-8", "dpsgd-4", "dpsgd-2", "clientdp-4", "clientdp-2", "ftrl-8",
        "centralized"]
EXTRA_ROWS = ["fedavg-dpcnn", "fedavg-scatter"]  # diagnostics: the DP recipes' models without DP
DELTA = 1e-5
RECORD_CANARIES, PARTY_CANARIES = 1000, 100


def row_config(row: str, rounds: int, seed: int, runs_dir: str, threads: int | None = None) -> dict:
    """The run configuration of one row (a nested dict for ``make_config``): only what the row is."""
    kind, _, eps = row.partition("-")
    cfg: dict = {
        "data": {"dataset": "fmnist", "parties": 100, "partition": "iid", "holdout": 0.0},
        "federation": {"rounds": rounds, "parties_per_round": 10, "eval_every": 5},
        "run": {"name": f"{row}-s{seed}", "runs_dir": runs_dir, "progress": False, "seed": seed, "device": "cpu"},
        "simulation": {"threads": threads},
    }
    if kind in ("fedavg", "centralized"):
        if row == "fedavg-dpcnn":  # the DP-SGD recipe without DP
            from pollen.privacy.recipe import DP_SGD_RECIPE

            cfg["model"] = {"model": "dp_cnn"}
            cfg["train"] = {**DP_SGD_RECIPE["train"], "batch_size": 300}
            cfg["federation"]["sampling"] = "balanced"
            cfg["strategy"] = dict(DP_SGD_RECIPE["strategy"])
        elif row == "fedavg-scatter":  # W1's FedAvg with the DP recipes' model (scatter_linear)
            cfg["model"] = {"model": "scatter_linear"}
            cfg["train"] = {"lr": 0.05, "batch_size": 32, "epochs": 1}
        else:
            cfg["model"] = {"model": "fedavg_cnn"}
            cfg["train"] = {"lr": 0.05, "batch_size": 32, "epochs": 1}
        if kind == "fedavg":
            cfg["privacy"] = {"audit_canaries": RECORD_CANARIES}
        return cfg
    if kind == "dpsgd":
        cfg["privacy"] = {"dp_sgd": True, "target_epsilon": float(eps), "delta": DELTA, "audit_canaries": RECORD_CANARIES}
        return cfg
    cfg["data"]["parties"] = 1000
    del cfg["federation"]["parties_per_round"]  # the party-level recipe chooses it for the budget
    mode = {"clientdp": "central", "distdp": "distributed", "ftrl": "ftrl"}[kind]
    cfg["privacy"] = {"client_dp": mode, "target_epsilon": float(eps), "delta": DELTA, "audit_canaries": PARTY_CANARIES}
    if kind == "distdp":
        cfg["privacy"].update(secagg=True, secagg_neighbours=20)
    return cfg


def membership_auc(assembly, state, history, members: int, seed: int) -> dict:
    """Loss-threshold MIA on the final model: AUC (with a bootstrap CI) and TPR at 0.1 % FPR."""
    import numpy as np
    import torch

    from pollen.attacks.membership import evaluate_scores, loss_threshold_scores
    from pollen.client.trainer import load_numpy_state
    from pollen.models import builtin

    ds, parts = builtin.dataset(assembly.cfg), builtin.parts(assembly.cfg)
    trained = sorted({p for line in history for p in line.get("parties", []) if p != "pooled"}, key=int)
    idx = np.concatenate([parts[int(p)] for p in trained]) if trained else np.concatenate(parts)
    rng = np.random.default_rng(seed)
    mem = torch.from_numpy(np.sort(rng.choice(idx, min(members, len(idx)), replace=False)))
    non = torch.from_numpy(np.sort(rng.choice(len(ds.y_test), members, replace=False)))
    model = assembly.new_model()
    load_numpy_state(model, state, strict=False)
    model.eval()
    s_in = loss_threshold_scores(model, torch.from_numpy(ds.x_train)[mem], torch.from_numpy(ds.y_train)[mem])
    s_out = loss_threshold_scores(model, torch.from_numpy(ds.x_test)[non], torch.from_numpy(ds.y_test)[non])
    res = evaluate_scores("loss-threshold", s_in, s_out, rng)
    return {"mia_auc": res.auc.value, "mia_auc_ci": [res.auc.low, res.auc.high],
            "mia_tpr_at_0.1%fpr": res.tpr_low_fpr.value}


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """``section.key=value`` settings (``--set``, for probes) over a row's config; values are JSON
    where they parse (numbers, true/false), strings otherwise; unknown settings are refused."""
    from pollen.config import flags_to_sections, merge

    values: dict[str, object] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set wants section.key=value (e.g. strategy.ema=0.8); got {item!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return merge(cfg, flags_to_sections(values))


def run_row(row: str, seed: int, rounds: int, members: int, threads: int | None, overrides: list[str] = ()) -> dict:
    """Train one row (one seed) and measure it."""
    import torch

    from pollen.compose import assemble
    from pollen.config import make_config
    from pollen.simulation import centralized, simulate
    from pollen.telemetry.report import privacy_summary

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(apply_overrides(row_config(row, rounds, seed, tmp, threads), list(overrides)))
        t0 = time.perf_counter()
        result = centralized(cfg) if row == "centralized" else simulate(cfg)
        wall = time.perf_counter() - t0
        hist = result.history
        resolved = make_config(json.loads(json.dumps(_toml_dict(result.run_dir))))
        priv = privacy_summary(hist)
        out = {
            "row": row, "seed": seed, "rounds": len(hist), "accuracy": hist[-1].get("accuracy"),
            "accuracy_by_round": {h["round"]: h["accuracy"] for h in hist if h.get("accuracy") is not None},
            "iterate_accuracy_by_round": {h["round"]: h["iterate_accuracy"] for h in hist
                                          if h.get("iterate_accuracy") is not None},
            "overrides": list(overrides),
            "epsilon": priv["epsilon_max"], "delta": priv["delta"], "accountant": priv["accountant"],
            "unit": priv["privacy_unit"], "epsilon_empirical": priv["epsilon_empirical"],
            "audit": {k: priv[k] for k in ("audit_canaries", "audit_guesses", "audit_correct", "audit_violation")},
            "noise_multiplier": hist[-1].get("noise_multiplier"), "clip_norm": hist[-1].get("clip_norm"),
            "recipe": {"model": resolved.model.model, "lr": resolved.train.lr, "epochs": resolved.train.epochs,
                       "batch_size": resolved.train.batch_size, "dp_sample_rate": resolved.privacy.dp_sample_rate,
                       "strategy": resolved.strategy.name, "server_lr": resolved.strategy.server_lr,
                       "server_momentum": resolved.strategy.server_momentum, "ema": resolved.strategy.ema,
                       "sampling": resolved.federation.sampling,
                       "parties_per_round": resolved.federation.parties_per_round,
                       "adaptive_clip": resolved.privacy.adaptive_clip,
                       "noise": resolved.privacy.client_dp_noise},
            "bytes_up": sum(h.get("bytes_up", 0) for h in hist), "bytes_down": sum(h.get("bytes_down", 0) for h in hist),
            "parties_failed": sum(len(h.get("parties_failed", [])) for h in hist),
            "wall_seconds": wall, "threads": torch.get_num_threads(),
        }
        if row != "centralized" and members > 0:  # --members 0: no attack (probes)
            out.update(membership_auc(assemble(resolved), result.state, hist, members, seed))
    return out


def _toml_dict(run_dir: Path) -> dict:
    from pollen.config import load_toml

    return load_toml(run_dir / "config.toml")


def done(path: Path) -> set[tuple[str, int, int, tuple[str, ...]]]:
    """(row, seed, planned rounds, overrides) already in ``path``."""
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.add((r["row"], r["seed"], r.get("planned_rounds", r["rounds"]), tuple(r.get("overrides", []))))
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(path: Path) -> str:
    """Markdown: the per-row table (mean ± sd over seeds), per-seed lines, and the targets."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in ROWS + EXTRA_ROWS if any(x["row"] == r for x in runs)]
    lines = ["| method | accuracy % | seeds | rounds | ε (accountant, worst party; δ = 1e-5) | bytes up + down | "
             "empirical ε (one-run audit, 95 %) | unit | MIA AUC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        rs = [x for x in runs if x["row"] == row]
        acc = [100 * x["accuracy"] for x in rs]
        eps = [x["epsilon"] for x in rs if x["epsilon"] is not None]
        emp = [x["epsilon_empirical"] for x in rs if x.get("epsilon_empirical") is not None]
        auc = [x["mia_auc"] for x in rs if x.get("mia_auc") is not None]
        mb = statistics.mean(x["bytes_up"] + x["bytes_down"] for x in rs) / 1e6
        lines.append(f"| {row} | {_mean_sd(acc)} | {len(rs)} | {rs[0]['rounds']} | "
                     f"{'∞ (no DP)' if not eps else f'{max(eps):.2f}'} | {mb:,.0f} MB | "
                     f"{'—' if not emp else ', '.join(f'{e:.2f}' for e in emp)} | {rs[0].get('unit') or '—'} | "
                     f"{'—' if not auc else f'{statistics.mean(auc):.3f}'} |")
    lines += ["", "Per seed (accuracy % after rounds 10 / 20 / 30 …; ε; empirical ε with correct/guesses):", "",
              "| row | seed | accuracy by round | ε | empirical ε | audit | recipe | wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in sorted(runs, key=lambda x: (ROWS.index(x["row"]) if x["row"] in ROWS else 99, x["seed"])):
        by = " / ".join(f"{100 * v:.1f}" for k, v in sorted(x["accuracy_by_round"].items(), key=lambda kv: int(kv[0]))
                        if int(k) % 10 == 0)
        a = x.get("audit") or {}
        audit = "—" if not a.get("audit_canaries") else f"{a['audit_correct']}/{a['audit_guesses']} of {a['audit_canaries']}"
        rec = x.get("recipe") or {}
        recipe = ", ".join(f"{k} {v}" for k, v in rec.items() if v is not None)
        if x.get("carried_from"):
            recipe += f" (run of {x['carried_from']}, same code path)"
        e = "—" if x["epsilon"] is None else f"{x['epsilon']:.2f}"
        ee = "—" if x.get("epsilon_empirical") is None else f"{x['epsilon_empirical']:.2f}"
        lines.append(f"| {x['row']} | {x['seed']} | {by} | {e} | {ee} | {audit} | {recipe} | {x['wall_seconds']:.0f} |")
    lines += ["", "Targets (paired by seed: the row minus FedAvg, or minus central DP, of the same seed):", ""]
    by_key = {(x["row"], x["seed"]): x for x in runs}
    for row, base, limit in (("dpsgd-8", "fedavg", 3), ("dpsgd-2", "fedavg", 6), ("clientdp-8", "fedavg", 5),
                             ("distdp-8", "clientdp-8", 1)):
        gaps = [100 * (by_key[(base, s)]["accuracy"] - by_key[(row, s)]["accuracy"])
                for (r, s) in by_key if r == row and (base, s) in by_key]
        if gaps:
            met = "met" if max(gaps) <= limit else "not met"
            lines.append(f"- {row} vs {base}: {', '.join(f'{g:+.2f}' for g in gaps)} points lower (target ≤ {limit}): {met}")
    viol = [x for x in runs if (x.get("audit") or {}).get("audit_violation")]
    lines.append(f"- audit lower bound above the accountant's ε: {len(viol)} of {sum(1 for x in runs if x['epsilon'] is not None)} DP runs")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="all", help=f"comma-separated rows or 'all' ({', '.join(ROWS)}; extra: {', '.join(EXTRA_ROWS)})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--members", type=int, default=1000, help="members and non-members of the membership attack (0: no attack)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/w6-privacy-v3.jsonl"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change a setting in every row (probes; recorded with each result), e.g. strategy.ema=0.8")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help="print the tables of a JSONL file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.one:
        res = run_row(args.one, args.seed, args.rounds, args.members, args.threads, args.set)
        res["planned_rounds"] = args.rounds
        print("RESULT " + json.dumps(res), flush=True)
        return
    rows = ROWS if args.rows == "all" else args.rows.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}", flush=True)
    for seed in seeds:
        for row in rows:
            if (row, seed, args.rounds, tuple(args.set)) in done(args.out):
                print(f"{row} seed {seed}: already in {args.out}", flush=True)
                continue
            t0 = time.time()
            proc = subprocess.run([sys.executable, __file__, "--one", row, "--seed", str(seed), "--rounds", str(args.rounds),
                                   "--members", str(args.members), "--threads", str(args.threads),
                                   *[f"--set={x}" for x in args.set]],
                                  capture_output=True, text=True)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not found:
                print(f"{row} seed {seed}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
                continue
            with args.out.open("a") as f:
                f.write(found[-1][len("RESULT "):] + "\n")
            r = json.loads(found[-1][len("RESULT "):])
            emp = r.get("epsilon_empirical")
            print(f"{row} seed {seed}: {100 * r['accuracy']:.2f} %, ε {r['epsilon'] if r['epsilon'] is None else round(r['epsilon'], 3)}, "
                  f"empirical ε {emp if emp is None else round(emp, 3)} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
