"""The hospitals table (the principles seed): each hospital alone, FedAvg, pooled records, then FedAvg
with secure aggregation, with DP-SGD, and with both — one table of BCE, AUC and F1 on the
coordinator's 114 held-out patients (``test.csv``).

    python examples/hospitals/compare.py            # ~2 min on 2 cores; writes benchmarks/results/hospitals.{json,md}
    python examples/hospitals/compare.py --quick    # a few seconds (the tests run this)

Every row trains the app of ``app.py`` with its own settings (30 rounds, SGD lr 0.05 momentum 0.9,
batch 32, 20 % of each hospital's records held out) and is repeated with seeds 0, 1, 2: the table
gives the mean and the spread (min–max). "Alone" is a one-party run on that hospital's file;
"pooled" trains the same model on the three hospitals' training records together, with the same
number of passes over the data (``pollen.centralized``). DP-SGD: ``--dp-sgd --target-epsilon 8
--delta 1e-3`` (each hospital's guarantee over the whole run, δ below 1/records of the smallest
hospital), clipping at ``--max-grad-norm 1.0``; SecAgg: ``--secagg`` (SecAgg+, all three in each
other's neighbourhood).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import pollen
from pollen.errors import PollenError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP = str(HERE / "app.py")
SITES = {"A": "hospital_a.csv", "B": "hospital_b.csv", "C": "hospital_c.csv"}
DP = {"dp_sgd": True, "target_epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}
SECAGG = {"secagg": True}
ROWS: dict[str, dict] = {
    **{f"hospital {h} alone": {"parties": 1, "data_dir": str(HERE / f)} for h, f in SITES.items()},
    "pooled records (centralised)": {"centralized": True},
    "FedAvg": {},
    "FedAvg + SecAgg": SECAGG,
    "FedAvg + DP-SGD (ε = 8)": DP,
    "FedAvg + DP-SGD (ε = 8) + SecAgg": {**DP, **SECAGG},
}


def run_row(settings: dict, seed: int, rounds: int, runs: Path, name: str) -> dict:
    """One run; the coordinator's metrics on test.csv after the last round, ε, bytes, seconds."""
    settings = dict(settings)
    start = time.perf_counter()
    common = {"rounds": rounds, "seed": seed, "runs_dir": str(runs), "progress": False, "threads": 1, "device": "cpu"}
    if settings.pop("centralized", False):
        result = pollen.centralized(app=APP, run_dir=runs / name, overwrite=True, **common)
    else:
        result = pollen.simulate(app=APP, name=name, overwrite=True, **common, **settings)
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
              f"on test.csv (114 patients never used for training). DP: {DP}. Wall time {meta['seconds']:.0f} s."]
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
