"""memory_budget mode: profiling cost per distinct block, solver time, gap to the exact optimum.

For each reference model it profiles one block on fake tensors (its first
profile, after the process's one-time FakeTensorMode warm-up, and the best of
three later ones; and the timed profile eager mode takes, which also runs the
block once for real), solves the knapsack at a few budgets with flop pricing
(what compiled regions use) and compares its recompute flops with exhaustive
search over every subset of candidate ops. A synthetic 48-op block times the
solver alone.

    .venv/bin/python bench/budget_bench.py
"""

from __future__ import annotations

import functools
import os
import platform
import random
import time
from collections.abc import Callable

import torch

from ac.budget.profile import BlockProfile, OpCost, profile_block
from ac.budget.solver import MAX_EXHAUSTIVE, candidates, exhaustive, solve
from ackit import models
from ackit.models import toy

BUDGETS = (0.1, 0.25, 0.5, 0.75)
BLOCKS = ("toy", "moe-tiny", "moe-small", "moe-medium")  # moe-gpu's block is a GPU's work


def _blocks() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    blocks = {}
    for name in BLOCKS:
        built = models.build(name)
        blocks[name] = (built.model.layers["0"], built.block_input())
    return blocks


def _seconds(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _synthetic(n_ops: int, seed: int = 0) -> BlockProfile:
    """A block far larger than the reference ones, to time the solver alone."""
    rng = random.Random(seed)
    ops = tuple(
        OpCost(
            torch.ops.aten.mm.default, i, rng.randrange(1, 100) * 2**20, rng.choice((1, 2, 3, 4, 8)) * 2**16
        )
        for i in range(n_ops)
    )
    return BlockProfile(ops, no_ac_bytes=sum(op.bytes for op in ops))


def _row(
    name: str, profile: BlockProfile, cold: float | None, warm: float | None, timed: float | None
) -> str:
    solve_ms = 1e3 * max(_seconds(functools.partial(solve, profile, b), repeat=3) for b in BUDGETS)
    gaps = []
    for budget in BUDGETS:
        [plan] = solve(profile, budget)
        if len(candidates(profile)) > MAX_EXHAUSTIVE:
            gaps.append("n/a")
            continue
        best = exhaustive(profile, budget)
        gaps.append(
            f"{100 * (plan.recompute_flops - best.recompute_flops) / max(best.recompute_flops, 1):.1f}%"
        )
    times = "n/a | n/a | n/a" if cold is None else f"{cold:.3f} | {warm:.3f} | {timed:.3f}"
    return f"| {name} | {len(profile.ops)} | {len(candidates(profile))} | {times} | {solve_ms:.2f} | {', '.join(gaps)} |"


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}\n"
    )
    blocks = _blocks()
    warmup = _seconds(functools.partial(profile_block, toy.ToyBlock(), (toy.toy_input(),), {}))
    print(f"first profile in this process (FakeTensorMode warm-up, once per process): {warmup:.3f} s\n")
    print(
        "| block | ops | candidates | first profile s | later profiles s (best of 3) | timed profile s (eager) |"
        f" solve ms (slowest budget) | recompute above the optimum at budgets {', '.join(map(str, BUDGETS))} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (block, x) in blocks.items():
        profile_once = functools.partial(profile_block, block, (x,), {})
        cold = _seconds(profile_once)
        warm = _seconds(profile_once, repeat=3)
        timed = _seconds(functools.partial(profile_block, block, (x,), {}, timed=True), repeat=3)
        print(_row(name, profile_once(), cold, warm, timed))
    print(_row("synthetic-48", _synthetic(48), None, None, None))


if __name__ == "__main__":
    main()
