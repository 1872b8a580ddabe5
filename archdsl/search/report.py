"""What a search leaves behind: the trial table (CSV), the best or Pareto architectures as standalone
specs, the plot of the trials against FLOPs, and the table printed at the end."""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .objectives import Metric
from .space import spec_text


@dataclass
class TrialRow:
    """One trial of the study as the results show it."""

    number: int
    state: str  # complete, pruned, failed, rejected, running, waiting
    values: dict = field(default_factory=dict)  # metric name -> value (complete trials)
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None
    arch_hash: str = ""
    reused_from: int | None = None
    retry_of: int | None = None
    rejections: int = 0  # candidates rejected before this one was accepted
    reason: str = ""
    seconds: float | None = None
    worker: str = ""
    sampled: dict = field(default_factory=dict)  # dimension name -> value
    last_intermediate: float | None = None  # a pruned trial's last reported value
    seeds: dict = field(default_factory=dict)  # seed -> {metric name: value} (repeats and confirmations)
    epochs: int | None = None  # epochs trained in the trial's first run (pruning stops it early)


def spread(row: TrialRow, name: str) -> tuple[float | None, int]:
    """The sample standard deviation of a metric over the trial's seeds (None for one seed), and the count."""
    series = [v[name] for v in row.seeds.values() if name in v]
    return (statistics.stdev(series) if len(series) > 1 else None), len(series)


def metric_value(row: TrialRow, metric: Metric) -> float | None:
    """A trial's value of a metric: an objective's result, else its analytic cost or measured latency."""
    if metric.name in row.values:
        return row.values[metric.name]
    return {"flops": row.flops, "params": row.params, "latency_ms": row.latency_ms}.get(metric.name)


def pareto_front(rows: list[TrialRow], metrics: list[Metric]) -> list[TrialRow]:
    """The complete trials no other complete trial beats on every metric (one per architecture)."""
    unique = list({r.arch_hash: r for r in sorted(rows, key=lambda r: -r.number)}.values())

    def key(r: TrialRow) -> list[float]:
        return [-metric_value(r, m) if m.direction == "maximize" else metric_value(r, m) for m in metrics]

    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    keys = {r.number: key(r) for r in unique}
    front = [r for r in unique if not any(dominates(keys[o.number], keys[r.number]) for o in unique)]
    return sorted(front, key=lambda r: keys[r.number])


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, so two workers finishing together never leave half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[TrialRow], metrics: list[Metric], dimension_names: list[str]) -> None:
    metric_names = [m.name for m in metrics if m.name not in ("flops", "params", "latency_ms")]
    columns = (["trial", "state"] + metric_names + [f"{n}_std" for n in metric_names]
               + ["seeds", "epochs", "params", "flops", "latency_ms", "arch_hash", "reused_from", "retry_of",
                  "rejected_before", "seconds", "worker", "reason"] + dimension_names)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        sampled = [r.sampled.get(name, "") for name in dimension_names]
        writer.writerow([r.number, r.state] + [_cell(r.values.get(n)) for n in metric_names]
                        + [_cell(spread(r, n)[0]) for n in metric_names] + [len(r.seeds) or "", _cell(r.epochs)]
                        + [_cell(v) for v in (r.params, r.flops, r.latency_ms, r.arch_hash, r.reused_from, r.retry_of,
                                              r.rejections, r.seconds, r.worker, r.reason)] + sampled)
    write_atomic(path, out.getvalue().encode())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


def spec_yaml(tree: dict, header: list[str]) -> str:
    """A resolved spec tree as a standalone spec file: components as calls, the input as a shape."""
    data = {}
    for key, value in tree.items():
        if key in ("name", "description"):
            data[key] = value
        elif key == "input" and isinstance(value, list):
            data[key] = "x".join(str(v) for v in value)
        else:
            data[key] = _yaml_value(value)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header) + body


def _yaml_value(value: Any) -> Any:
    if isinstance(value, dict):
        return spec_text(value) if "kind" in value else {k: _yaml_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_value(v) for v in value]
    if isinstance(value, str):
        return spec_text(value)
    return value


def fmt_metric(metric: Metric, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.name == "flops":
        return f"{value / 1e6:.2f}M"
    if metric.name == "params":
        return f"{value / 1e6:.3f}M"
    if metric.name == "accuracy":
        return f"{value:.4f}"
    return f"{value:.3f}" if math.isfinite(value) else str(value)


def results_table(rows: list[TrialRow], metrics: list[Metric], p_values: dict[int, float] | None = None) -> str:
    """The best (or Pareto) trials: trial, metrics (mean +- std over seeds where a trial has several),
    seeds, the tie test's p-value against the best (``p_values``, first row the best), params, FLOPs,
    latency."""
    shown = [m for m in metrics if m.name not in ("flops", "params")]
    has_seeds = any(len(r.seeds) > 1 for r in rows)
    head = ["trial"] + [m.name for m in shown] + (["seeds"] if has_seeds else [])
    head += ["vs best"] if p_values is not None else []
    head += ["params", "FLOPs"]
    has_latency = any(r.latency_ms is not None for r in rows) and not any(m.name == "latency_ms" for m in shown)
    head += ["latency_ms"] if has_latency else []
    cells = [head]
    for i, r in enumerate(rows):
        line = [str(r.number)]
        for m in shown:
            std, _ = spread(r, m.name)
            line.append(fmt_metric(m, r.values.get(m.name)) + (f" +- {std:.4f}" if std is not None else ""))
        line += [str(len(r.seeds) or 1)] if has_seeds else []
        if p_values is not None:
            line.append("best" if i == 0 else f"tied, p={p_values[r.number]:.2f}" if r.number in p_values else "-")
        line += [f"{r.params / 1e6:.3f}M", f"{r.flops / 1e6:.2f}M"]
        line += [f"{r.latency_ms:.2f}" if r.latency_ms is not None else "-"] if has_latency else []
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_trials(path: Path, rows: list[TrialRow], front: list[TrialRow], metric: Metric, budget_flops: int,
                title: str) -> None:
    """Each trial's metric against its FLOPs: complete trials, pruned ones at their last reported
    value, the front marked, the FLOPs budget as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    complete = [r for r in rows if r.state == "complete" and metric.name in r.values]
    pruned = [r for r in rows if r.state == "pruned" and r.last_intermediate is not None and r.flops]
    if pruned:
        ax.scatter([r.flops / 1e6 for r in pruned], [r.last_intermediate for r in pruned], marker="x", color="0.6",
                   label="pruned (last value)")
    ax.scatter([r.flops / 1e6 for r in complete], [r.values[metric.name] for r in complete], color="tab:blue",
               alpha=0.7, label="complete")
    if front:
        ordered = sorted(front, key=lambda r: r.flops)
        ax.plot([r.flops / 1e6 for r in ordered], [r.values[metric.name] for r in ordered], "-o", color="tab:red",
                markerfacecolor="none", markersize=10, label="front")
        for r in ordered:
            ax.annotate(f"#{r.number}", (r.flops / 1e6, r.values[metric.name]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.axvline(budget_flops / 1e6, color="k", linestyle="--", linewidth=1, label="FLOPs budget")
    ax.set_xlabel("FLOPs (M, analytic multiply-adds)")
    ax.set_ylabel(f"{metric.name} ({'higher' if metric.direction == 'maximize' else 'lower'} is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
