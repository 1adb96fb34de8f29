"""Run reports: the summary of a run directory, ``report.md``, the accuracy/loss plot, and the
side-by-side comparison of several runs (the seed's table: method, accuracy, rounds, communication).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pollen.errors import RunError
from pollen.telemetry.history import read_history


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """``(config, history, summary)`` of a run directory.

    Raises:
        RunError: not a run directory.
    """
    d = Path(run_dir)
    if not (d / "history.jsonl").exists():
        raise RunError(f"{d} is not a run directory (no history.jsonl); runs are written under runs/<name>/")
    cfg = tomllib.loads((d / "config.toml").read_text()) if (d / "config.toml").exists() else {}
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    return cfg, read_history(d), summary


def summarize(cfg: dict[str, Any], history: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run."""
    evals = [r for r in history if r.get("accuracy") is not None]
    final = evals[-1] if evals else {}
    best = max(evals, key=lambda r: r["accuracy"]) if evals else {}
    up = sum(r.get("bytes_up", 0) for r in history)
    down = sum(r.get("bytes_down", 0) for r in history)
    data_bytes = summary.get("data_bytes")
    fed = [r for r in history if r.get("fed_accuracy") is not None]
    return {
        "method": summary.get("method") or cfg.get("strategy", {}).get("name", "?"),
        "dataset": cfg.get("data", {}).get("dataset", "?"),
        "rounds": len(history),
        "final_accuracy": final.get("accuracy"),
        "final_loss": final.get("loss"),
        "best_accuracy": best.get("accuracy"),
        "best_round": best.get("round"),
        "fed_accuracy": fed[-1]["fed_accuracy"] if fed else None,
        "bytes_up": up,
        "bytes_down": down,
        "comm_ratio": (up + down) / data_bytes if data_bytes else None,
        "uplink_ratio": up / data_bytes if data_bytes else None,
        "seconds": sum(r.get("seconds", 0.0) for r in history),
        "failed": sum(len(r.get("parties_failed", [])) for r in history),
        "epsilon": next((r["epsilon"] for r in reversed(history) if r.get("epsilon") is not None), None),
    }


def summary_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table of run summaries (the seed's comparison table)."""
    head = "| run | method | test accuracy | best (round) | rounds | communication (up + down) | comm / data | ε | seconds |\n"
    head += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    lines = []
    for name, s in rows:
        comm = f"{_mb(s['bytes_up'])} + {_mb(s['bytes_down'])}"
        ratio = "—" if s["comm_ratio"] is None else f"{100 * s['comm_ratio']:.1f} %"
        eps = "—" if s["epsilon"] is None else f"{s['epsilon']:.2f}"
        best = f"{_pct(s['best_accuracy'])} ({s['best_round']})" if s["best_accuracy"] is not None else "—"
        lines.append(f"| {name} | {s['method']} | {_pct(s['final_accuracy'])} | {best} | {s['rounds']} | {comm} | "
                     f"{ratio} | {eps} | {s['seconds']:.1f} |")
    return head + "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, baseline: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` (summary + per-round table) and ``plot.png`` into a run directory."""
    d = Path(run_dir)
    cfg, history, summary = load_run(d)
    s = summarize(cfg, history, summary)
    lines = [f"# Run `{d.name}`", "", summary_table([(d.name, s)])]
    if summary.get("centralized"):
        c = summary["centralized"]
        lines += ["## Against training on pooled data", "",
                  "| training | test accuracy | passes over the data |", "| --- | --- | --- |",
                  f"| federated ({s['method']}) | {_pct(s['final_accuracy'])} | {c.get('epochs')} |",
                  f"| centralized (pooled data) | {_pct(c.get('accuracy'))} | {c.get('epochs')} |", ""]
    lines += ["## Rounds", "", "| round | accuracy | loss | fed. accuracy | train loss | parties | failed | up | down | seconds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in history:
        lines.append(
            f"| {r.get('round')} | {_pct(r.get('accuracy'))} | {r.get('loss') if r.get('loss') is None else format(r['loss'], '.4f')} | "
            f"{_pct(r.get('fed_accuracy'))} | {format(r['train_loss'], '.4f') if r.get('train_loss') is not None else '—'} | "
            f"{len(r.get('parties', []))} | {len(r.get('parties_failed', []))} | {_mb(r.get('bytes_up'))} | "
            f"{_mb(r.get('bytes_down'))} | {r.get('seconds', 0):.2f} |")
    plot = plot_history(history, d / "plot.png", title=d.name)
    lines += ["", f"![accuracy and loss per round]({plot.name})" if plot else
              "(plot skipped: install matplotlib with `pip install 'pollen-fl[plot]'`)", ""]
    out = d / "report.md"
    out.write_text("\n".join(lines))
    return out


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Accuracy and loss per round as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ev = [r for r in history if r.get("accuracy") is not None]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot([r["round"] for r in ev], [100 * r["accuracy"] for r in ev], marker="o", label="test (global model)")
    fed = [r for r in history if r.get("fed_accuracy") is not None]
    if fed:
        a1.plot([r["round"] for r in fed], [100 * r["fed_accuracy"] for r in fed], marker="s", label="parties' held-out")
    # a fixed legend place: loc="best" warns (an error under pytest) when the machine is slow
    a1.set_xlabel("round"), a1.set_ylabel("accuracy (%)"), a1.grid(alpha=0.3), a1.legend(loc="lower right")
    a2.plot([r["round"] for r in ev], [r["loss"] for r in ev], marker="o", color="tab:red", label="test loss")
    tl = [r for r in history if r.get("train_loss") is not None]
    if tl:
        a2.plot([r["round"] for r in tl], [r["train_loss"] for r in tl], marker=".", color="tab:orange", label="train loss")
    a2.set_xlabel("round"), a2.set_ylabel("loss"), a2.grid(alpha=0.3), a2.legend(loc="upper right")
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(run_dirs: list[str | Path]) -> str:
    """A markdown table comparing runs side by side."""
    rows = []
    for d in run_dirs:
        cfg, history, summary = load_run(d)
        rows.append((Path(d).name, summarize(cfg, history, summary)))
    return summary_table(rows)
