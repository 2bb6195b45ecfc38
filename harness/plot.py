"""The AC report's figure: activation memory against recompute, one panel per model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.units import MIB


def plot(report: dict[str, Any], path: Path) -> None:
    """Each mode a point, budget modes apart, the Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    cols = min(2, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    for ax, (name, data) in zip(axes.flat, models.items(), strict=False):
        points = {r["mode"]: (r["recompute_pct"], r["activation_bytes"] / MIB) for r in data["rows"]}
        labels: dict[tuple[float, float], list[str]] = {}
        for mode, point in points.items():
            labels.setdefault(point, []).append(mode)
        for (x, y), modes in labels.items():
            budget = all(m.startswith("budget") for m in modes)  # budget-<b>, budget@<mode> (matched memory)
            ax.scatter(
                x, y, marker="^" if budget else "o", color="tab:orange" if budget else "tab:blue", zorder=3
            )
            offset = (5, -11) if budget else (5, 4)
            ax.annotate(", ".join(modes), (x, y), textcoords="offset points", xytext=offset, fontsize=7)
        front = sorted(points[m] for m in data["pareto"])
        ax.step(*zip(*front, strict=True), where="post", color="tab:green", linewidth=1, zorder=2)
        ax.scatter(
            *zip(*front, strict=True), s=110, facecolors="none", edgecolors="tab:green", label="Pareto front"
        )
        ax.set_title(name)
        ax.set_xlabel("recompute overhead (% of no-AC step flops)")
        ax.set_ylabel("activation memory after forward (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    fig.suptitle(f"AC modes: memory vs recompute ({report['device']}, torch {report['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
