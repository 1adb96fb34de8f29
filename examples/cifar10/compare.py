"""The CIFAR-10 seed's table in one command: centralised vs FedAvg vs FedAvg + DP-SGD at ε = 8 and
ε = 4, with the seed's FederatedCNN and augmentation, as the seed prints it (accuracy, rounds,
communication / data, ε), and the seed's targets as checks.

    python examples/cifar10/compare.py --data-dir /path/to/cifar-10-batches-py      # CIFAR-10
    python examples/cifar10/compare.py --dataset fmnist                              # any built-in dataset
    python examples/cifar10/compare.py --quick                                       # the tests: digits, 2 rounds

The seed's settings (``examples/cifar10.toml``): 10 parties with non-overlapping IID shards, all of
them every round, 20 rounds, SGD lr 0.01 momentum 0.9, batch 64, 2 local epochs, FederatedCNN
(BatchNorm; GroupNorm under DP-SGD), RandomCrop(32, 4) + horizontal flip (on 28×28 images: the
same crop with padding 4). DP rows: the same run (FedAvg, lr 0.01, momentum 0.9, Poisson batches of
64 on average: q = 64 / records) with DP-SGD in every party (Opacus, clip 1.0), noise calibrated so
that the whole run spends ε per party (δ = 1e-5, RDP accountant); the DP recipe's other choices
(balanced sampling: every party every round here) apply. The
"FedAvg, compressed" row shows how far compression goes towards the 10 % communication target
(top-k 1 % uplink with error feedback, int8 downlink). Communication / data is Pollen's: every
byte up and down over the whole run, over the bytes of the training data as it is held in memory
(float32 pixels). Each row appends its result to ``--out``'s JSON lines as it ends; the table
(``--out`` with ``.md``) shows the newest row of each method run with the same settings, so rows
run one at a time (each takes about 50 min on 2 cores) add up to the whole table. Each row records
where it ran (the CPU's or the GPU's name): its seconds are that machine's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pollen
from pollen.errors import PollenError
from pollen.telemetry.report import load_run, summarize

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEED_CONFIG = HERE.parent / "cifar10.toml"
TARGETS = {"accuracy": 0.85, "comm_ratio": 0.10, "epsilon": 8.0}
DELTA = 1e-5
ROWS: dict[str, dict] = {
    "centralised": {"centralized": True},
    "federated (FedAvg)": {},
    "federated, compressed (top-k 1 % + EF up, int8 down)": {"codec": "topk", "topk_fraction": 0.01,
                                                             "error_feedback": True, "downlink": "int8"},
    "federated + DP (ε = 8)": {"dp_sgd": True, "target_epsilon": 8.0, "delta": DELTA, "max_grad_norm": 1.0,
                               "strategy": "fedavg"},
    "federated + DP (ε = 4)": {"dp_sgd": True, "target_epsilon": 4.0, "delta": DELTA, "max_grad_norm": 1.0,
                               "strategy": "fedavg"},
}


SHORT = {"centralised": "centralised", "fedavg": "federated (FedAvg)",
         "compressed": "federated, compressed (top-k 1 % + EF up, int8 down)",
         "dp8": "federated + DP (ε = 8)", "dp4": "federated + DP (ε = 4)"}


def parse_rows(text: str) -> tuple[list[str], list[str]]:
    """``--rows``: ``all``, or comma-separated row labels (whole labels may hold commas themselves)
    or short names (``SHORT``). Returns (chosen labels, pieces that name no row)."""
    if text.strip() == "all":
        return list(ROWS), []
    chosen, part = [], ""
    for piece in text.split(","):
        part = f"{part},{piece}" if part else piece
        name = SHORT.get(part.strip(), part.strip())
        if name in ROWS:
            chosen.append(name)
            part = ""
    return chosen, [part.strip()] if part.strip() else []


def where(device: str, threads: int) -> str:
    """The machine a row trains on, in words: the GPU's name, or the CPU's model and torch's threads."""
    import torch

    from pollen.client.trainer import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {threads} thread{'s' if threads != 1 else ''}"


def run_row(label: str, settings: dict, base: dict, runs: Path) -> dict:
    """One row: final test accuracy, rounds, rounds to reach the accuracy target, comm / data, ε."""
    settings = dict(settings)
    name = "".join(c if c.isalnum() else "-" for c in label)[:40]
    start = time.perf_counter()
    if settings.pop("centralized", False):
        result = pollen.centralized(str(SEED_CONFIG), run_dir=runs / name, overwrite=True, **base)
    else:
        result = pollen.simulate(str(SEED_CONFIG), name=name, overwrite=True, runs_dir=str(runs), **base, **settings)
    cfg, history, summary = load_run(result.run_dir)
    s = summarize(cfg, history, summary)
    reached = next((r["round"] for r in history if (r.get("accuracy") or 0) >= TARGETS["accuracy"]), None)
    return {"row": label, "accuracy": s["final"], "rounds": s["rounds"], "rounds_to_target": reached,
            "comm_ratio": s["comm_ratio"] if not label.startswith("centralised") else None,
            "bytes": s["bytes_up"] + s["bytes_down"], "epsilon": s["epsilon"], "seconds": time.perf_counter() - start}


def latest_rows(path: Path, settings: dict) -> list[dict]:
    """The newest row of each method in the JSON lines at ``path`` run with ``settings`` (threads,
    device and progress aside: they do not change a result), in the table's order."""
    def key(st: dict) -> dict:
        return {k: v for k, v in st.items() if k not in ("threads", "device", "progress")}

    newest: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("dataset") == settings["dataset"] and key(r.get("settings", {})) == key(settings):
            newest[r["row"]] = r
    return [newest[label] for label in ROWS if label in newest]


def table(rows: list[dict], meta: dict) -> str:
    lines = ["| method | accuracy | rounds (to 85 %) | communication / data | ε | seconds (where) | checks |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = [r["accuracy"] is not None and r["accuracy"] >= TARGETS["accuracy"]]
        if r["comm_ratio"] is not None:
            ok.append(r["comm_ratio"] <= TARGETS["comm_ratio"])
        if r["epsilon"] is not None:
            ok.append(r["epsilon"] <= TARGETS["epsilon"] + 1e-9)
        comm = "— (no communication)" if r["comm_ratio"] is None else f"{100 * r['comm_ratio']:.1f} %"
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        secs = f"{r['seconds']:.0f} ({r.get('where', '?')})"
        lines.append(f"| {r['row']} | {acc} | {r['rounds']} ({r['rounds_to_target'] or 'not reached'}) | {comm} | "
                     f"{eps} | {secs} | {'all met' if all(ok) else 'NOT all met'} |")
    lines += ["", f"Targets (the seed's): accuracy ≥ 85 %, communication / data ≤ 10 %, ε ≤ 8. Dataset {meta['dataset']}; "
              f"settings {meta['settings']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", help="built-in dataset (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="its files (CIFAR-10: the cifar-10-batches-py folder)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: the seed's 20)")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: the seed's 2)")
    parser.add_argument("--rows", default="all", help="comma-separated rows (default all), by label or short name: "
                        + "; ".join(f"{k} = {v}" for k, v in SHORT.items()).replace("%", "%%"))
    parser.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:1, mps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="scikit-learn digits, 2 rounds (for the tests)")
    parser.add_argument("--runs-dir", default=None, help="keep each row's run folder here (round by round history, "
                        "checkpoints); default: a temporary folder removed at the end")
    parser.add_argument("--out", default=None, help="JSON-lines file the rows are appended to "
                        "(default: benchmarks/results/cifar-table-<dataset>.jsonl)")
    args = parser.parse_args(argv)
    base: dict = {"dataset": "digits" if args.quick else args.dataset, "progress": False, "device": args.device,
                  "threads": args.threads}
    if args.data_dir:
        base["data_dir"] = args.data_dir
    if args.quick:
        base.update(rounds=2, epochs=1, model="small_cnn", augmentation="none")
    if args.rounds:
        base["rounds"] = args.rounds
    if args.epochs:
        base["epochs"] = args.epochs
    chosen, unknown = parse_rows(args.rows)
    if unknown or not chosen:
        print(f"error: --rows {args.rows!r}: no row named {unknown[0] if unknown else args.rows!r}; choose from: "
              + "; ".join(f"{k} ({v})" for k, v in SHORT.items()), file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"cifar-table-{base['dataset']}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    runs = Path(args.runs_dir) if args.runs_dir else Path(tmp.name)
    rows = []
    try:
        machine = where(args.device, args.threads)
        for label in chosen:
            print(f"  {label}", flush=True)
            row = {**run_row(label, ROWS[label], base, runs), "dataset": base["dataset"], "settings": base,
                   "where": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
            rows.append(row)
            with out.open("a") as f:  # recorded as each row ends
                f.write(json.dumps(row) + "\n")
    except PollenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        tmp.cleanup()
    rows = latest_rows(out, base)  # this run's rows and those earlier runs of the same settings appended
    text = table(rows, {"dataset": base["dataset"], "settings": base})
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
