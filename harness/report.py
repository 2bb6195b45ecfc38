"""`python -m harness report`: every AC mode on the reference models, side by side.

For each model and mode it measures forward and backward flops, recompute
overhead (% of the no-AC step's flops), activation bytes held after forward and
the step's peak (MemTracker), and whether gradients are bitwise equal to no
AC's; on CUDA also the allocator's activation and peak bytes and step time. It
prints a table per model, writes JSON and plots memory against recompute.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from harness.sweep import Row

from harness.models import MODELS
from harness.units import MIB

DEFAULT_MODELS = [name for name, spec in MODELS.items() if spec.in_default_report]
DEVICES = ("auto", "cpu", "cuda")
# cuBLAS reads this when it starts; deterministic algorithms need it on CUDA.
CUBLAS_WORKSPACE = ":4096:8"


def pareto(rows: list[Row]) -> list[str]:
    """Modes no other mode beats on both activation bytes and recompute."""
    return [
        r.mode
        for r in rows
        if not any(
            (o.activation_bytes, o.recompute_pct) < (r.activation_bytes, r.recompute_pct)
            and o.activation_bytes <= r.activation_bytes
            and o.recompute_pct <= r.recompute_pct
            for o in rows
        )
    ]


def table(name: str, rows: list[Row]) -> str:
    """A markdown table of one model's rows."""
    cuda = rows[0].step_ms is not None
    none_act = rows[0].activation_bytes or 1
    front = set(pareto(rows))
    head = (
        "| mode | fwd MFLOP | bwd MFLOP | recompute % | act MiB | act % of none | peak MiB | grads bitwise |"
    )
    head += " CUDA act MiB | CUDA peak MiB | step ms |" if cuda else ""
    lines = [f"### {name}", "", head, "|" + "---|" * head.count(" |")]
    for r in rows:
        cells = [
            r.mode + (" *" if r.mode in front else ""),
            f"{r.forward_flops / 1e6:.1f}",
            f"{r.backward_flops / 1e6:.1f}",
            f"{r.recompute_pct:.1f}",
            f"{r.activation_bytes / MIB:.3f}",
            f"{100 * r.activation_bytes / none_act:.0f}",
            f"{r.peak_bytes / MIB:.3f}",
            "yes" if r.grads_bitwise_equal else "no",
        ]
        if cuda:
            cells += [
                f"{r.cuda_activation_bytes / MIB:.3f}",
                f"{r.cuda_peak_bytes / MIB:.3f}",
                f"{r.step_ms:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*`: on the Pareto front of activation memory vs recompute.\n"


def grads_compared(device: torch.device) -> str:
    """What "grads bitwise" compared, in words for the report."""
    if device.type == "cuda":
        return (
            "every mode's against no AC's, bitwise, both under torch.use_deterministic_algorithms(True) "
            f"with CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}"
        )
    return "every mode's against no AC's, bitwise"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand to `python -m harness`."""
    parser = commands.add_parser("report", help="measure every AC mode on the reference models")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma list from {list(MODELS)} (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help=f"one of {list(DEVICES)} (default: best available)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.set_defaults(run=main)


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The models to measure; a ValueError naming the bad value and what is allowed, before any work."""
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"--models {args.models!r}: unknown {unknown}; allowed are {list(MODELS)}")
    if args.device not in DEVICES:
        raise ValueError(f"--device {args.device!r} is not one of {list(DEVICES)}")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(
            "the plot needs matplotlib, which is not installed: pip install 'ac-harness[report]', "
            "or pass --no-plot"
        )
    return models


def main(args: argparse.Namespace) -> int:
    models = check_arguments(args)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    import torch

    from harness.sweep import device_for, run

    device = device_for(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Flops and bytes do not depend on threads; OpenMP spinning on a busy small host does.
        torch.set_num_threads(1)
    try:
        rows = run(models, device, lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "grads_compared": grads_compared(device),
        "models": {
            name: {"rows": [asdict(r) for r in rs], "pareto": pareto(rs)} for name, rs in rows.items()
        },
    }
    (args.out / "ac-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"AC report on {report['device']}, torch {report['torch']}, {report['date']}\n")
    print("\n".join(table(name, rs) for name, rs in rows.items()))
    print(f"Gradients: {report['grads_compared']}.\n")
    if not args.no_plot:
        from harness.plot import plot

        plot(report, args.out / "ac-report.png")
    print(
        f"wrote {args.out / 'ac-report.json'}"
        + ("" if args.no_plot else f" and {args.out / 'ac-report.png'}")
    )
    return 0
