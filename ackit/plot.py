"""The AC report's figure: per model, activation memory against recompute and against step time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ackit.units import MIB

# (x field, x label, front key in the report): the two panels of a model's row.
PANELS = (
    ("recompute_pct", "recompute overhead (% of no-AC step flops)", "pareto"),
    ("step_ms", "step time (ms, median of interleaved steps)", "time_pareto"),
)


def plot(report: dict[str, Any], path: Path) -> None:
    """Each mode a point, budget modes and compiled rows apart, each Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.8 * len(models)), squeeze=False)
    for row_axes, (name, data) in zip(axes, models.items(), strict=True):
        for ax, (field, label, front_key) in zip(row_axes, PANELS, strict=True):
            _panel(ax, data, field, front_key)
            ax.set_title(name)
            ax.set_xlabel(label)
            ax.set_ylabel("activation memory after forward (MiB)")
    fig.suptitle(f"AC modes: memory vs recompute and vs time ({report['device']}, torch {report['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax: Any, data: dict[str, Any], field: str, front_key: str) -> None:
    points = {
        r["mode"]: (r[field], _memory(r) / MIB)
        for r in data["rows"]
        if r[field] is not None and r["mode"] in _competing(data, front_key)
    }
    labels: dict[tuple[float, float], list[str]] = {}
    for mode, point in points.items():
        labels.setdefault(point, []).append(mode)
    for (x, y), modes in labels.items():
        budget = all(m.startswith("budget") for m in modes)  # budget-<b>, budget@<mode> (matched memory)
        compiled = all(m.endswith("compiled") for m in modes)
        color = "tab:purple" if compiled else "tab:orange" if budget else "tab:blue"
        ax.scatter(x, y, marker="^" if budget else "o", color=color, zorder=3)
        offset = (5, -11) if budget else (5, 4)
        ax.annotate(", ".join(modes), (x, y), textcoords="offset points", xytext=offset, fontsize=7)
    front = sorted(points[m] for m in data[front_key] if m in points)
    ax.step(*zip(*front, strict=True), where="post", color="tab:green", linewidth=1, zorder=2)
    ax.scatter(
        *zip(*front, strict=True), s=110, facecolors="none", edgecolors="tab:green", label="Pareto front"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)


def _memory(row: dict[str, Any]) -> int:
    cuda = row.get("cuda_activation_bytes")
    return cuda if cuda is not None else row["activation_bytes"]


def _competing(data: dict[str, Any], front_key: str) -> set[str]:
    """The rows a panel draws: those its front was chosen from (CPU compiled rows measure bytes apart)."""
    rows = data["rows"]
    cuda = rows[0].get("cuda_activation_bytes") is not None
    return {r["mode"] for r in rows if (front_key == "time_pareto" and cuda) or not r["compiled"]}
