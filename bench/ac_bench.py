"""Step time of every AC mode, eager and compiled, against no AC, on the device at hand.

For each mode: median wall time of one forward+backward over interleaved
steps (warm-up excluded), its ratio to no AC's, activation bytes held after
forward (MemTracker; compiled: what autograd saves, as compiled graphs refuse
MemTracker's dispatch mode), and the SAC dispatch cost per op this process
measured (what the memory_budget planner prices). Plain checkpointing of each block's
attention or MoE (`attn-ckpt`, `moe-ckpt`, no dispatch mode) is measured too:
it is one of the simple options the eager budget must not be slower than.

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

from ac import ACConfig, apply_ac
from ac.budget import BudgetCheckpoint, costs
from ac.policy import make_op_sac_policy
from ackit import models, timing
from ackit.presets import PRESETS
from ackit.units import MIB
from harness import measure

EAGER_MODES = [
    "none",
    "full",
    "layer-2",
    "layer-4",
    "op",
    "budget-0.1",
    "budget-0.25",
    "budget-0.5",
    "budget-0.75",
    "budget-1.0",
]
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


def _table(name: str, modes: list[str], device: torch.device, steps: int, backend: str | None) -> None:
    built = {mode: _build(name, mode, device, backend) for mode in modes}
    times = timing.step_times_ms({mode: b.step for mode, b in built.items()}, device, warmup=2, timed=steps)
    label = "eager" if backend is None else f"compiled ({backend})"
    print(f"\n{name}, {label}: median of {steps} interleaved steps\n")
    memory = "activation MiB (MemTracker)" if backend is None else "saved MiB (autograd)"
    print(f"| mode | step ms | ratio to none | {memory} |")
    print("|---|---|---|---|")
    for mode, b in built.items():
        if backend is None:
            held = measure.activation_bytes(b.model, b.step, b.inputs)
        else:  # compiled graphs refuse MemTracker's dispatch mode
            held = measure.saved_activation_bytes(b.step, [*b.model.parameters(), *b.inputs])
        ratio = times[mode] / times["none"]
        print(f"| {mode} | {times[mode]:.2f} | {ratio:.2f} | {held / MIB:.2f} |", flush=True)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="moe-small")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="also compile each block (inductor)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, "
        f"{device}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    device_costs = costs.measure(device)
    print(
        f"SAC dispatch cost per op (forward + recompute): {1e6 * device_costs.sac_dispatch_s:.1f} us; "
        f"eager op {1e6 * device_costs.op_s:.1f} us; matmul {device_costs.flops_per_s / 1e9:.1f} GFLOP/s"
    )
    budget_us, op_us = _per_call_us(device)
    print(
        f"per block call: memory_budget wrapper with its plan known {budget_us:.1f} us; "
        f"op-SAC's context set-up alone {op_us:.1f} us"
    )
    _table(args.model, [*EAGER_MODES, *SUBMODULES], device, args.steps, None)
    if args.compiled:
        _table(args.model, COMPILED_MODES, device, args.steps, "inductor")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
