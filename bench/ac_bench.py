"""Step time of every AC mode, eager, traced eager and compiled, side by side in one run.

Rows: eager modes (`<mode>`), the traced-eager path (`<mode> traced`: each block
compiled with `traced_eager`, aot_eager's graph of eager kernels with each op called
directly, SAC without a per-op dispatch mode), plain `aot_eager` for none and op
(`<mode> aot_eager`: the same graphs, each op through `OpOverload.__call__`) and,
with `--compiled`, inductor (`<mode> inductor`). All
rows are timed in one set of interleaved steps (warm-up excluded), so a busy
machine slows all alike: median and quartiles per row, its ratio to eager no
AC's, activation bytes held after forward (MemTracker; traced and compiled: what
autograd saves, as compiled graphs refuse MemTracker's dispatch mode), and
whether the first step's gradients are bitwise equal to eager no AC's. Plain
checkpointing of each block's attention or MoE (`attn-ckpt`, `moe-ckpt`, no
dispatch mode) is measured too: among the simple options a budget must not be
slower than. The summary checks issue 22's targets.

    .venv/bin/python bench/ac_bench.py [--model moe-small] [--steps 15] [--compiled] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
import timeit

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from ac import ACConfig, apply_ac, traced
from ac.budget import BudgetCheckpoint, costs
from ac.policy import make_op_sac_policy
from ackit import models, timing
from ackit.presets import PRESETS
from ackit.units import MIB
from harness import measure

BUDGETS = ("budget-0.25", "budget-0.5", "budget-0.75")
SIMPLE = ["none", "full", "layer-2", "layer-4"]
EAGER_MODES = [*SIMPLE, "op", "budget-0.1", *BUDGETS, "budget-1.0"]
TRACED_MODES = [*SIMPLE, "op", *BUDGETS]
TRACED_BACKEND = traced.NAME  # the recommended traced-eager path
AOT_EAGER_MODES = ["none", "op"]  # the same graphs with their ops called through OpOverload.__call__
COMPILED_MODES = ["none", "full", "op", "budget-0.5"]
SUBMODULES = {"attn-ckpt": "attention", "moe-ckpt": "moe"}


def _config(mode: str) -> ACConfig:
    kind, _, value = mode.partition("-")
    if kind == "budget":
        return ACConfig(mode="memory_budget", memory_budget=float(value))
    if kind == "layer":
        return ACConfig(selective_ac_option=value)
    return PRESETS[mode]


def _build(name: str, mode: str, device: torch.device, compile_backend: str | None) -> models.Built:
    built = models.build(name, device)
    if mode in SUBMODULES:
        for block in built.model.layers.values():
            child = SUBMODULES[mode]
            setattr(block, child, checkpoint_wrapper(getattr(block, child), preserve_rng_state=True))
        return built
    config = _config(mode)
    if compile_backend is not None:
        config = dataclasses.replace(config, compile=True, compile_backend=compile_backend)
    apply_ac(built.model, config)
    return built


@dataclasses.dataclass(frozen=True)
class Measured:
    built: models.Built
    compiled: bool
    grads_equal: bool


def _measure_first_step(built: models.Built, reference: torch.nn.Module, compiled: bool) -> Measured:
    measure.scalar_loss(built.step()).backward()
    try:
        measure.assert_grads_match(reference, built.model)
        equal = True
    except AssertionError:
        equal = False
    return Measured(built, compiled, equal)


def _held_bytes(m: Measured) -> int:
    b = m.built
    if m.compiled:  # compiled graphs refuse MemTracker's dispatch mode
        return measure.saved_activation_bytes(b.step, [*b.model.parameters(), *b.inputs])
    return measure.activation_bytes(b.model, b.step, b.inputs)


def _per_call_us(device: torch.device) -> tuple[float, float]:
    """The budget wrapper's cost per call once its plan is known (an identity block at
    budget 1.0, minus calling it directly), and op-SAC's per-call context set-up."""
    block, x = torch.nn.Identity(), torch.ones(4, 8, device=device, requires_grad=True)
    budget_fn = BudgetCheckpoint(1.0)
    budget_fn(block, x)
    calls = 20000
    direct = timeit.timeit(lambda: block(x), number=calls)
    wrapped = timeit.timeit(lambda: budget_fn(block, x), number=calls)
    contexts = timeit.timeit(
        lambda: create_selective_checkpoint_contexts(make_op_sac_policy(())), number=calls
    )
    return 1e6 * (wrapped - direct) / calls, 1e6 * contexts / calls


def _rows(name: str, device: torch.device, compiled: bool) -> dict[str, tuple[str | None, str]]:
    """Row label -> (compile backend or None, mode)."""
    rows = {mode: (None, mode) for mode in [*EAGER_MODES, *SUBMODULES]}
    rows.update({f"{mode} traced": (TRACED_BACKEND, mode) for mode in TRACED_MODES})
    rows.update({f"{mode} aot_eager": ("aot_eager", mode) for mode in AOT_EAGER_MODES})
    if compiled:
        rows.update({f"{mode} inductor": ("inductor", mode) for mode in COMPILED_MODES})
    return rows


def _summary(times: dict[str, timing.StepTime], held: dict[str, int]) -> list[str]:
    """Issue 22's targets from this run's figures."""
    t = {label: step.median_ms for label, step in times.items()}
    lines = [
        f"traced op-SAC / eager none: {t['op traced'] / t['none']:.2f} (target <= 1.15); "
        f"/ traced none: {t['op traced'] / t['none traced']:.2f}; traced none / eager none: "
        f"{t['none traced'] / t['none']:.2f}",
        f"traced op-SAC / eager op-SAC: {t['op traced'] / t['op']:.2f} (target <= 0.60)",
        f"{TRACED_BACKEND} / aot_eager: op-SAC {t['op traced'] / t['op aot_eager']:.2f}, none "
        f"{t['none traced'] / t['none aot_eager']:.2f}; aot_eager op-SAC / eager none: "
        f"{t['op aot_eager'] / t['none']:.2f}",
    ]
    simple = [*SIMPLE, *SUBMODULES]
    for budget in BUDGETS:
        share = float(budget.split("-")[1])
        limit = held["full"] + share * (held["none"] - held["full"])
        # Simple options whose (eager, MemTracker) memory fits the budget, in either form.
        fitting = [mode for mode in simple if held[mode] <= limit]
        candidates = [label for mode in fitting for label in (mode, f"{mode} traced") if label in t]
        fastest = min(candidates, key=t.get)
        ratio = t[f"{budget} traced"] / t[fastest]
        lines.append(
            f"traced {budget} / fastest fitting simple mode ({fastest}, {t[fastest]:.2f} ms): {ratio:.2f} "
            f"(target <= 1.10); eager {budget}: {t[budget] / t[fastest]:.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="moe-small")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="also compile each block with inductor")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {device}, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    device_costs = costs.measure(device)
    print(
        f"SAC dispatch cost per op (forward + recompute): {1e6 * device_costs.sac_dispatch_s:.1f} us; "
        f"eager op {1e6 * device_costs.op_s:.1f} us; matmul {device_costs.flops_per_s / 1e9:.1f} GFLOP/s"
    )
    budget_us, op_us = _per_call_us(device)
    print(
        f"per block call: memory_budget wrapper, plan known {budget_us:.1f} us; op-SAC context set-up {op_us:.1f} us"
    )

    reference = models.build(args.model, device)
    measure.scalar_loss(reference.step()).backward()
    started = time.perf_counter()
    measured = {}
    for label, (backend, mode) in _rows(args.model, device, args.compiled).items():
        measured[label] = _measure_first_step(
            _build(args.model, mode, device, backend), reference.model, backend is not None
        )
    print(
        f"built and stepped every row once (traces, compiles, plans): {time.perf_counter() - started:.0f} s"
    )
    times = timing.step_times(
        {label: m.built.step for label, m in measured.items()}, device, warmup=2, timed=args.steps
    )
    held = {label: _held_bytes(m) for label, m in measured.items()}

    print(f"\n{args.model}: median [quartiles] of {args.steps} interleaved steps, all rows in one run\n")
    print("| row | step ms | ratio to eager none | held MiB | grads bitwise = eager none |")
    print("|---|---|---|---|---|")
    for label, m in measured.items():
        ratio = times[label].median_ms / times["none"].median_ms
        kind = " (saved)" if m.compiled else ""
        yes = "yes" if m.grads_equal else "no"
        print(
            f"| {label} | {times[label]} | {ratio:.2f} | {held[label] / MIB:.2f}{kind} | {yes} |", flush=True
        )
    print()
    print("\n".join(_summary(times, held)))
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
