"""The hospitals table (the principles seed): each hospital alone, FedAvg, pooled records, then FedAvg
with secure aggregation, with DP-SGD, and with both — one table of BCE, AUC and F1.

    python examples/hospitals/compare.py            # ~3 min on 2 cores; writes benchmarks/results/hospitals.{json,md}
    python examples/hospitals/compare.py --quick    # a few seconds (the tests run this)

All 569 records of the breast-cancer set are the three hospitals' patients, cut in the seed's
proportions 500 : 300 : 200 by the app issue's ``--scheme sizes --sizes 5:3:2`` (284, 171 and 114
patients; the split follows the run seed). Each hospital keeps 20 % of its own patients as its
test patients (never trained on); every row is measured on the same 114 test patients, the three
hospitals' together, and on each hospital's own (``fed_*``). The model, loss (binary
cross-entropy), metrics and feature scaling are ``app.py``'s.

Every row trains with its own settings (30 rounds, SGD lr 0.05 momentum 0.9, batch 32) and is
repeated with seeds 0, 1, 2: the table gives the mean and the spread (min–max). "Alone" is a
one-party run on that hospital's training patients; "pooled" trains the same model on the three
hospitals' training patients together, with the same number of passes over the data
(``pollen.centralized``). DP-SGD: ``--dp-sgd --target-epsilon 8 --delta 1e-3`` (each hospital's
guarantee over the whole run, δ below 1/records of the smallest hospital), clipping at
``--max-grad-norm 1.0``; SecAgg: ``--secagg`` (SecAgg+, all three in each other's neighbourhood).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import numpy as np
import torch

import pollen
from pollen.app import partition_rows
from pollen.config import make_config
from pollen.errors import ConfigError, PollenError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP = runpy.run_path(str(HERE / "app.py"))  # the hospitals' app: model, loss, metrics, feature scaling

SITES = ("A", "B", "C")
SIZES = "5:3:2"  # the seed's 500 : 300 : 200
TEST_FRACTION = 0.2  # of each hospital's own patients
DP = {"dp_sgd": True, "target_epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}
SECAGG = {"secagg": True}
ROWS: dict[str, dict] = {
    **{f"hospital {h} alone": {"only": i} for i, h in enumerate(SITES)},
    "pooled records (centralised)": {"centralized": True},
    "FedAvg": {},
    "FedAvg + SecAgg": SECAGG,
    "FedAvg + DP-SGD (ε = 8)": DP,
    "FedAvg + DP-SGD (ε = 8) + SecAgg": {**DP, **SECAGG},
}


def records() -> tuple[torch.Tensor, torch.Tensor]:
    """All 569 patients: features scaled as ``app.py`` scales them (N, 30), diagnoses (N, 1), 1 = malignant."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (torch.from_numpy(data.data).float() - APP["_LOW"]) / APP["_SPAN"] * 2 - 1  # (569, 30)
    return x, torch.from_numpy(1 - data.target).float().unsqueeze(1)  # scikit-learn's 0 is malignant


def hospital_rows(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, test rows) of each hospital: the ``--scheme sizes --sizes 5:3:2`` split of the
    569 records for ``seed`` (the function ``ctx.partition`` calls), then 20 % of each hospital's
    patients held out by a permutation seeded with ``[seed, hospital]``."""
    cfg = make_config({"data": {"parties": len(SITES), "partition": "sizes", "sizes": SIZES}, "run": {"seed": seed}})
    return [held_out(rows, seed, i) for i, rows in enumerate(partition_rows(cfg, 569, None))]


def held_out(rows: np.ndarray, seed: int, hospital: int) -> tuple[np.ndarray, np.ndarray]:
    """A hospital's records ``rows`` as (training rows, its 20 % test rows)."""
    order = np.asarray(rows)[np.random.default_rng([seed, hospital]).permutation(len(rows))]
    k = round(TEST_FRACTION * len(rows))
    return np.sort(order[k:]), np.sort(order[:k])


def make_app(only: int | None = None) -> dict:
    """``app.py`` on all 569 records: hospital ``ctx.party_index`` (or ``only``, alone) trains on its
    training patients and tests on its own test patients; the coordinator measures on all three
    hospitals' test patients."""
    x, y = records()

    def load_data(ctx):
        if only is not None:
            train, test = hospital_rows(ctx.seed)[only]
        elif ctx.config.data.partition != "sizes" or ctx.config.data.sizes != SIZES:
            raise ConfigError(f"the hospitals table splits the records with --scheme sizes --sizes {SIZES}")
        else:  # a federated row: this hospital's share, cut by the run's own --scheme sizes
            rows, _ = ctx.partition(np.arange(len(y)), y.numpy())
            train, test = held_out(rows, ctx.seed, ctx.party_index)
        return (x[train], y[train]), (x[test], y[test])

    def server_data(ctx):
        test = np.sort(np.concatenate([t for _, t in hospital_rows(ctx.seed)]))
        return x[test], y[test]

    return {"model": APP["model"], "loss": APP["loss"], "metrics": APP["metrics"],
            "primary_metric": "auc", "load_data": load_data, "server_data": server_data,
            "config": {"data": {"parties": 1 if only is not None else len(SITES), "holdout": 0.0,
                                **({} if only is not None else {"partition": "sizes", "sizes": SIZES})},
                       "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "epochs": 1}}}


def run_row(settings: dict, seed: int, rounds: int, runs: Path, name: str) -> dict:
    """One run; the coordinator's metrics on the 114 test patients after the last round, ε, bytes, seconds."""
    settings = dict(settings)
    start = time.perf_counter()
    common = {"rounds": rounds, "seed": seed, "runs_dir": str(runs), "progress": False, "threads": 1, "device": "cpu"}
    app = make_app(settings.pop("only", None))
    if settings.pop("centralized", False):
        result = pollen.centralized(app=app, run_dir=runs / name, overwrite=True, **common)
    else:
        result = pollen.simulate(app=app, name=name, overwrite=True, **common, **settings)
    last = result.history[-1]
    eps = [r.get("epsilon") for r in result.history if r.get("epsilon") is not None]
    return {"bce": last["loss"], "auc": last["auc"], "f1": last["f1"], "accuracy": last["accuracy"],
            "epsilon": max(eps) if eps else None, "seconds": time.perf_counter() - start,
            "bytes": sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in result.history)}


def _cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(mean(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def table(results: dict[str, list[dict]], meta: dict) -> str:
    lines = ["| setting | BCE (test) | AUC | F1 | accuracy | ε (per hospital) | bytes, whole run | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, runs in results.items():
        eps = [r["epsilon"] for r in runs if r["epsilon"] is not None]
        lines.append(f"| {label} | {_cell([r['bce'] for r in runs], '.3f')} | {_cell([r['auc'] for r in runs], '.3f')} | "
                     f"{_cell([r['f1'] for r in runs], '.3f')} | {_cell([100 * r['accuracy'] for r in runs], '.1f')} % | "
                     f"{_cell(eps, '.2f') if eps else '—'} | {mean(r['bytes'] for r in runs) / 1e6:.2f} MB | "
                     f"{mean(r['seconds'] for r in runs):.1f} |")
    lines += ["", f"Mean (min–max) over seeds {meta['seeds']}; {meta['rounds']} rounds; metrics of the final model "
              f"on the 114 test patients (20 % of each hospital's, never trained on). DP: {DP}. Wall time {meta['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, one seed (for the tests)")
    parser.add_argument("--seeds", type=int, default=3, help="repetitions with seeds 0 … N-1 (default %(default)s)")
    parser.add_argument("--out", default=None, help="where the table goes (default: benchmarks/results/; with --quick: a "
                        "temporary folder)")
    args = parser.parse_args(argv)
    rounds, seeds = (3, [0]) if args.quick else (30, list(range(args.seeds)))
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out) if args.out else (Path(tmp.name) if args.quick else REPO / "benchmarks" / "results")
    start = time.perf_counter()
    results: dict[str, list[dict]] = {}
    try:
        for label, settings in ROWS.items():
            print(f"  {label}", flush=True)
            results[label] = [run_row(settings, s, rounds, Path(tmp.name) / "runs", f"row{len(results)}-{s}")
                              for s in seeds]
    except PollenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {"rounds": rounds, "seeds": seeds, "seconds": time.perf_counter() - start, "quick": args.quick}
    text = table(results, meta)
    out.mkdir(parents=True, exist_ok=True)
    stem = "hospitals-quick" if args.quick else "hospitals"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"written: {out / stem}.md, .json")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
