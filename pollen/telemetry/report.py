"""Run reports: the summary of a run directory, ``report.md``, the accuracy/loss plot, and the
side-by-side comparison of several runs (the seed's table: method, accuracy, rounds, communication).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pollen.errors import RunError
from pollen.telemetry.history import party_metric, read_history


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


def primary_of(summary: dict[str, Any]) -> tuple[str, bool]:
    """(the run's primary metric, whether higher is better) from its summary (accuracy by default)."""
    return summary.get("primary_metric") or "accuracy", bool(summary.get("higher_is_better", True))


def headline(history: list[dict[str, Any]], key: str) -> float | None:
    """The last recorded value of ``key`` in a history."""
    return next((r[key] for r in reversed(history) if isinstance(r.get(key), (int, float))), None)


def _fmt_metric(name: str, v: float | None) -> str:
    if v is None:
        return "—"
    if name in ("accuracy", "multilabel_accuracy") or name.endswith("_accuracy"):
        return f"{100 * v:.2f} %"
    return f"{v:.4g}"


def summarize(cfg: dict[str, Any], history: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run (its primary metric: final and best)."""
    key, higher = primary_of(summary)
    evals = [r for r in history if isinstance(r.get(key), (int, float))]
    where = "coordinator"
    if not evals:  # an app without server_data: the parties' held-out data is all there is
        evals = [{**r, key: r[f"fed_{key}"]} for r in history if isinstance(r.get(f"fed_{key}"), (int, float))]
        where = "parties"
    final = evals[-1] if evals else {}
    best = (max if higher else min)(evals, key=lambda r: r[key]) if evals else {}
    up = sum(r.get("bytes_up", 0) for r in history)
    down = sum(r.get("bytes_down", 0) for r in history)
    data_bytes = summary.get("data_bytes")
    fed = [r for r in history if r.get(f"fed_{key}") is not None]
    app = summary.get("app")
    return {
        "method": summary.get("method") or cfg.get("strategy", {}).get("name", "?"),
        "dataset": summary.get("app_name") or (Path(app).stem if app else cfg.get("data", {}).get("dataset", "fmnist")),
        "metric": key if where == "coordinator" else f"{key} (parties)",
        "rounds": len(history),
        "final": final.get(key),
        "final_loss": final.get("loss"),
        "best": best.get(key),
        "best_round": best.get("round"),
        "fed": fed[-1][f"fed_{key}"] if fed else None,
        "final_accuracy": final.get("accuracy") if key == "accuracy" else None,
        "bytes_up": up,
        "bytes_down": down,
        "comm_ratio": (up + down) / data_bytes if data_bytes else None,
        "uplink_ratio": up / data_bytes if data_bytes else None,
        "seconds": sum(r.get("seconds", 0.0) for r in history),
        "failed": sum(len(r.get("parties_failed", [])) for r in history),
        "epsilon": next((r["epsilon"] for r in reversed(history) if r.get("epsilon") is not None), None),
        **privacy_summary(history),
    }


def privacy_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's privacy: unit, δ, accountant, the worst ε the accountant gave (a round's ``epsilon``
    is the largest among its parties; ε only grows, so the run's is the largest of all rounds) and
    the one-run audit's empirical lower bound, when the run had one."""
    last = next((r for r in reversed(history) if r.get("privacy_unit")), {})
    eps = [r["epsilon"] for r in history if isinstance(r.get("epsilon"), (int, float))]
    audit = next((r for r in reversed(history) if r.get("epsilon_empirical") is not None), {})
    out = {"privacy_unit": last.get("privacy_unit"), "delta": last.get("delta"), "accountant": last.get("accountant"),
           "epsilon_max": max(eps) if eps else None,
           "epsilon_empirical": audit.get("epsilon_empirical"),
           "epsilon_empirical_confidence": audit.get("epsilon_empirical_confidence"),
           "audit_canaries": audit.get("audit_canaries"), "audit_guesses": audit.get("audit_guesses"),
           "audit_correct": audit.get("audit_correct")}
    out["audit_violation"] = (out["epsilon_empirical"] is not None and out["epsilon_max"] is not None
                              and out["epsilon_empirical"] > out["epsilon_max"] + 1e-9)
    return out


def privacy_lines(s: dict[str, Any]) -> list[str]:
    """The report's privacy section (empty for a run without DP and without an audit)."""
    if s.get("privacy_unit") is None:
        return []
    eps = "∞ (no DP)" if s["epsilon_max"] is None else f"{s['epsilon_max']:.3f}"
    delta = "—" if s["delta"] is None else f"{s['delta']:g}"
    if s["epsilon_empirical"] is None:
        emp = "— (no audit: `pollen audit`)"
    else:
        emp = (f"{s['epsilon_empirical']:.3f} ({100 * s['epsilon_empirical_confidence']:.0f} % confidence; "
               f"{s['audit_correct']} of {s['audit_guesses']} guesses right, {s['audit_canaries']} canaries)")
    lines = ["## Privacy", "", "| unit | δ | accountant | ε (accountant, worst party, whole run) | empirical ε (one-run audit, lower bound) |",
             "| --- | --- | --- | --- | --- |",
             f"| {s['privacy_unit']} | {delta} | {s['accountant'] or '—'} | {eps} | {emp} |", ""]
    if s.get("audit_violation"):
        lines += [f"**BUG: the audit's lower bound ε ≥ {s['epsilon_empirical']:.3f} exceeds the accountant's "
                  f"ε = {s['epsilon_max']:.3f}.** A correct mechanism and accountant cannot produce this (beyond the "
                  f"{100 * (1 - s['epsilon_empirical_confidence']):.0f} % error the confidence allows): report it.", ""]
    return lines


def summary_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table of run summaries (the seed's comparison table)."""
    head = "| run | method | data | metric | final | best (round) | rounds | communication (up + down) | comm / data | ε | seconds |\n"
    head += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    lines = []
    for name, s in rows:
        comm = f"{_mb(s['bytes_up'])} + {_mb(s['bytes_down'])}"
        ratio = "—" if s["comm_ratio"] is None else f"{100 * s['comm_ratio']:.1f} %"
        eps = "—" if s["epsilon"] is None else f"{s['epsilon']:.2f}"
        m = s["metric"].split(" ")[0]
        best = f"{_fmt_metric(m, s['best'])} ({s['best_round']})" if s["best"] is not None else "—"
        lines.append(f"| {name} | {s['method']} | {s['dataset']} | {m} | {_fmt_metric(m, s['final'])} | {best} | "
                     f"{s['rounds']} | {comm} | {ratio} | {eps} | {s['seconds']:.1f} |")
    return head + "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, baseline: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` (summary + per-round table) and ``plot.svg`` into a run directory."""
    d = Path(run_dir)
    cfg, history, summary = load_run(d)
    s = summarize(cfg, history, summary)
    key = s["metric"].split(" ")[0]
    lines = [f"# Run `{d.name}`", "", summary_table([(d.name, s)])]
    notes = summary.get("metric_notes") or {}
    if notes:
        lines += ["Federated evaluation combines " + "; ".join(f"`{k}` as the {v}" for k, v in notes.items()) + ".", ""]
    lines += privacy_lines(s)
    if summary.get("centralized"):
        c = summary["centralized"]
        lines += ["## Against training on pooled data", "",
                  f"| training | {key} | passes over the data |", "| --- | --- | --- |",
                  f"| federated ({s['method']}) | {_fmt_metric(key, s['final'])} | {c.get('epochs')} |",
                  f"| centralized (pooled data) | {_fmt_metric(key, c.get(key))} | {c.get('epochs')} |", ""]
    extra = sorted({k for r in history for k in r if k in (summary.get("metric_names") or [])} - {key})
    head = ["round", key, "loss", f"fed. {key}", "train loss", *extra, "parties", "failed", "up", "down", "seconds"]
    lines += ["## Rounds", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in history:
        loss, train_loss = r.get("loss"), party_metric(r, "train_loss")
        cells = [str(r.get("round")), _fmt_metric(key, r.get(key)), "—" if loss is None else format(loss, ".4f"),
                 _fmt_metric(key, r.get(f"fed_{key}")),
                 format(train_loss, ".4f") if isinstance(train_loss, (int, float)) else "—",
                 *(_fmt_metric(k, r.get(k)) for k in extra),
                 str(len(r.get("parties", []))), str(len(r.get("parties_failed", []))), _mb(r.get("bytes_up")),
                 _mb(r.get("bytes_down")), f"{r.get('seconds', 0):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    plot = plot_history(history, d / "plot.svg", title=d.name, metric=key)
    lines += ["", f"![{key} and loss per round]({plot.name})", ""]
    out = d / "report.md"
    out.write_text("\n".join(lines))
    return out


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "", metric: str = "accuracy") -> Path:
    """The primary metric (global model, parties' held-out data) and the loss (global, training) per
    round, side by side, as an SVG (``pollen.telemetry.svgplot``: no plotting library)."""
    from pollen.telemetry.svgplot import BLUE, GREEN, ORANGE, RED, Panel, Series, write_svg

    scale = 100 if metric.endswith("accuracy") else 1

    def series(label: str, key: str, color: str, marker: str, mul: float = 1) -> Series:
        pts = [(r["round"], mul * v) for r in history if isinstance(v := r.get(key), (int, float))]
        return Series(label, [p[0] for p in pts], [p[1] for p in pts], color, marker)

    tl = [(r["round"], v) for r in history if isinstance(v := party_metric(r, "train_loss"), (int, float))]
    left = Panel([series("global model (coordinator's data)", metric, BLUE, "circle", scale),
                  series("parties' held-out", f"fed_{metric}", GREEN, "square", scale)],
                 "round", f"{metric} (%)" if scale == 100 else metric, "lower right")
    right = Panel([series("loss", "loss", RED, "circle"),
                   Series("train loss", [t[0] for t in tl], [t[1] for t in tl], ORANGE, "dot")],
                  "round", "loss", "upper right")
    return write_svg(path, [left, right], title)


def compare(run_dirs: list[str | Path]) -> str:
    """A markdown table comparing runs side by side."""
    rows = []
    for d in run_dirs:
        cfg, history, summary = load_run(d)
        rows.append((Path(d).name, summarize(cfg, history, summary)))
    return summary_table(rows)
