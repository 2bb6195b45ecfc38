"""`python -m ackit report`: every AC mode on the reference models, side by side.

For each model and mode it measures forward and backward flops, recompute
overhead (% of the no-AC step's flops), activation bytes held after forward and
the step's peak (MemTracker), whether gradients equal no AC's, and step time
(median of interleaved steps); on CUDA also the allocator's activation and peak
bytes. Compiled rows (each block compiled after AC) come on CUDA by default. It
prints a table per model, writes JSON and plots memory against recompute and
against step time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ackit.sweep import Row

from ackit.models import MODELS, report_defaults
from ackit.units import MIB
from harness import tiers

DEVICES = ("auto", "cpu", "cuda")
# `--compile-backend`: "auto" compiles on CUDA with inductor and not on CPU (minutes of C++ builds).
NO_COMPILE, AUTO_COMPILE = "none", "auto"


def _front(rows: list[Row], cost: str) -> list[str]:
    """Modes no other row beats on both activation bytes and `cost` (a Row field)."""

    def point(r: Row) -> tuple[float, float]:
        return (memory_of(r), getattr(r, cost))

    return [
        r.mode
        for r in rows
        if not any(
            point(o) < point(r) and all(a <= b for a, b in zip(point(o), point(r), strict=True)) for o in rows
        )
    ]


def memory_of(row: Row) -> int:
    """The activation bytes rows are compared on: CUDA's allocator where measured, else MemTracker's."""
    return row.cuda_activation_bytes if row.cuda_activation_bytes is not None else row.activation_bytes


def pareto(rows: list[Row]) -> list[str]:
    """Eager modes no other beats on both activation bytes and recompute flops."""
    return _front([r for r in rows if not r.compiled], "recompute_pct")


def time_pareto(rows: list[Row]) -> list[str]:
    """Modes no other beats on activation bytes and, beyond the spread of both, on step time
    (its upper quartile below the other's lower one): a difference within the noise of
    interleaved steps dominates nothing, and rows running one plan share one timing. On CPU
    only eager rows compete: compiled rows' bytes are what autograd saves, not MemTracker's."""
    cuda = rows[0].cuda_activation_bytes is not None
    competing = [r for r in rows if cuda or not r.compiled]
    return [
        r.mode
        for r in competing
        if not any(memory_of(o) <= memory_of(r) and o.step.faster_than(r.step) for o in competing)
    ]


def table(name: str, rows: list[Row]) -> str:
    """A markdown table of one model's rows."""
    cuda = rows[0].cuda_activation_bytes is not None
    none_act = rows[0].activation_bytes or 1
    flop_front, time_front = set(pareto(rows)), set(time_pareto(rows))
    head = "| mode | fwd MFLOP | bwd MFLOP | recompute % | act MiB | act % of none | peak MiB | grads equal |"
    head += " step ms | step % of none |"
    head += " CUDA act MiB | CUDA peak MiB |" if cuda else ""
    lines = [f"### {name}", "", head, "|" + "---|" * head.count(" |")]
    none_ms = rows[0].step_ms or 1.0
    for r in rows:
        dominated = r.mode not in time_front and (cuda or not r.compiled)  # CPU: compiled rows not compared
        marks = ("*" if r.mode in flop_front else "") + ("†" if dominated else "")
        cells = [
            r.mode + (f" {marks}" if marks else ""),
            _number(r.forward_flops, 1e6, ".1f"),
            _number(r.backward_flops, 1e6, ".1f"),
            _number(r.recompute_pct, 1, ".1f"),
            f"{r.activation_bytes / MIB:.3f}",
            f"{100 * r.activation_bytes / none_act:.0f}",
            _number(r.peak_bytes, MIB, ".3f"),
            "yes" if r.grads_equal else "no",
            (f"{r.step_ms:.2f}" if r.step_q1_ms is None else str(r.step))
            + (f" (plan of {r.same_plan_as})" if r.same_plan_as else ""),
            f"{100 * r.step_ms / none_ms:.0f}",
        ]
        if cuda:
            cells += [f"{r.cuda_activation_bytes / MIB:.3f}", f"{r.cuda_peak_bytes / MIB:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = (
        "`*`: on the Pareto front of activation memory vs recompute flops; `†`: dominated in time "
        "(another mode holds no more memory and steps faster beyond the spread: its upper quartile "
        "below this one's lower). Step ms: median [lower-upper quartile] of interleaved steps; a row "
        "running the plan of an earlier one is timed once, with it."
    )
    if any(r.compiled for r in rows):
        legend += " Compiled rows: act MiB is what autograd saves; no flop counts (compiled graphs refuse a FlopCounterMode)."
    if any(r.traced for r in rows):
        legend += (
            " Traced rows: each block compiled with traced_eager (aot_eager's traced graph of eager "
            "kernels, each op called directly; no per-op dispatch mode); grads equal means bitwise to "
            "a plain eager no-AC step."
        )
    plans = [f"- {r.mode}: " + "; ".join(r.plans) for r in rows if r.plans]
    if plans:
        legend += "\n\nPlans the budget chose (per block and input layout):\n" + "\n".join(plans)
    return "\n".join(lines) + f"\n\n{legend}\n"


def _number(value: float | None, unit: float, spec: str) -> str:
    return "n/a" if value is None else format(value / unit, spec)


def grads_compared(device: torch.device) -> str:
    """What "grads equal" compared, in words for the report."""
    text = "every eager mode's against no AC's, bitwise"
    if device.type == "cuda":
        text += (
            ", both under torch.use_deterministic_algorithms(True) "
            f"with CUBLAS_WORKSPACE_CONFIG={tiers.DETERMINISTIC_ENV['CUBLAS_WORKSPACE_CONFIG']}"
        )
    return text + "; compiled modes' against compiled no AC's, within rtol 1e-4, atol 1e-5"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand to `python -m ackit`."""
    parser = commands.add_parser("report", help="measure every AC mode on the reference models")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")
    parser.add_argument(
        "--models",
        default="",
        help=f"comma list from {list(MODELS)} (default: {report_defaults('cpu')} on CPU, "
        f"{report_defaults('cuda')} on CUDA)",
    )
    parser.add_argument("--device", default="auto", help=f"one of {list(DEVICES)} (default: best available)")
    parser.add_argument(
        "--compile-backend",
        default=AUTO_COMPILE,
        help="torch.compile backend of the compiled rows; 'none' for no compiled rows "
        "(default 'auto': inductor on CUDA, none on CPU)",
    )
    parser.add_argument(
        "--no-traced",
        action="store_true",
        help="skip the traced-eager rows (each block compiled with traced_eager; seconds of tracing per mode)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.set_defaults(run=main)


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The models asked for ([] for the device's defaults); a ValueError naming the bad
    value and what is allowed, before any work."""
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or (args.models and not models):
        raise ValueError(f"--models {args.models!r}: unknown {unknown}; allowed are {list(MODELS)}")
    if args.device not in DEVICES:
        raise ValueError(f"--device {args.device!r} is not one of {list(DEVICES)}")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(
            "the plot needs matplotlib, which is not installed: pip install 'ac-harness[report]', "
            "or pass --no-plot"
        )
    return models


def compile_backend_for(choice: str, device: torch.device) -> str | None:
    """The backend of the compiled rows, or None for none; an unknown one is a ValueError."""
    from ac.config import compile_backends

    if choice == NO_COMPILE:
        return None
    if choice == AUTO_COMPILE:
        return "inductor" if device.type == "cuda" else None
    allowed = [NO_COMPILE, AUTO_COMPILE, *compile_backends()]
    if choice not in allowed:
        raise ValueError(f"--compile-backend {choice!r} is not one of {allowed}")
    return choice


def main(args: argparse.Namespace) -> int:
    models = check_arguments(args)
    import torch

    from ackit.sweep import as_dicts, device_for, run

    device = device_for(args.device)
    backend = compile_backend_for(args.compile_backend, device)
    models = models or report_defaults(device.type)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # One thread: OpenMP spinning on a busy small host makes step times noise.
        torch.set_num_threads(1)
    try:
        progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        rows = run(models, device, progress, backend, traced=not args.no_traced)
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "grads_compared": grads_compared(device),
        "models": {
            name: {"rows": as_dicts(rs), "pareto": pareto(rs), "time_pareto": time_pareto(rs)}
            for name, rs in rows.items()
        },
    }
    (args.out / "ac-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"AC report on {report['device']}, torch {report['torch']}, {report['date']}\n")
    print("\n".join(table(name, rs) for name, rs in rows.items()))
    print(f"Gradients: {report['grads_compared']}.\n")
    if not args.no_plot:
        from ackit.plot import plot

        plot(report, args.out / "ac-report.png")
    print(
        f"wrote {args.out / 'ac-report.json'}"
        + ("" if args.no_plot else f" and {args.out / 'ac-report.png'}")
    )
    return 0
