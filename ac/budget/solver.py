"""Choose which ops of a block to save within a memory budget.

Under selective checkpointing a block holds exactly the outputs of the ops it
saves (plus its inputs, held with or without AC), and backward re-runs every
other op once. So a plan's activation memory is the bytes of its saved ops and
its recompute cost is the flops of the rest: a 0/1 knapsack that keeps the
most flops within `budget * no_ac_bytes`. The ops that draw random numbers are
one item, saved together or recomputed together (see `ac.rng`). Leaving the block unwrapped (no AC)
holds `no_ac_bytes` and recomputes nothing; it competes as one more option.
Identical blocks share one budget (see `solve`), which lets them mix plans.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from ac.budget.profile import BlockProfile, OpCost
from ac.config import check_memory_budget

OpKey = tuple[torch._ops.OpOverload, int]
State = tuple[int, int, Any]  # (bytes held, flops not recomputed, what achieves them)

# Largest Pareto front the knapsack keeps per step; beyond it, states are
# merged into byte buckets (still feasible, no longer guaranteed optimal).
MAX_FRONT = 4096
# Largest number of candidate ops `exhaustive` accepts (2**n subsets).
MAX_EXHAUSTIVE = 20


@dataclass(frozen=True)
class Item:
    """What the knapsack saves or recomputes as one: an op, or a block's random ops together."""

    keys: frozenset[OpKey]
    flops: int
    bytes: int


@dataclass(frozen=True)
class Plan:
    checkpoint: bool  # False: run the block without AC
    saved: frozenset[OpKey]
    bytes: int
    recompute_flops: int


def check_budget(budget: float) -> float:
    """`budget` as a float, or a ValueError naming it and the allowed range."""
    return check_memory_budget(budget, f"memory budget {budget!r}")


def budget_bytes(profile: BlockProfile, budget: float) -> int:
    """The bytes a block may hold: `budget` of its no-AC activations (0 is full AC's)."""
    return math.floor(check_budget(budget) * profile.no_ac_bytes + 1e-6)


def candidates(profile: BlockProfile) -> list[Item]:
    """What is worth saving: ops that cost flops to recompute and own the storage they
    create, and the block's random ops as one item where each of them can be saved."""
    items = [_item([op]) for op in profile.ops if not op.random and op.flops > 0 and op.bytes > 0]
    random_ops = [op for op in profile.ops if op.random]
    # An in-place random op (CPU dropout's bernoulli_) cannot be served from a saved copy.
    if random_ops and not any(op.op._schema.is_mutable for op in random_ops):
        group = _item(random_ops)
        if group.flops > 0 and group.bytes > 0:
            items.append(group)
    return items


def _item(ops: list[OpCost]) -> Item:
    keys = frozenset((op.op, op.index) for op in ops)
    return Item(keys, sum(op.flops for op in ops), sum(op.bytes for op in ops))


def solve(profile: BlockProfile, budget: float, copies: int = 1) -> tuple[Plan, ...]:
    """Plans for `copies` blocks with this profile: fewest recompute flops, bytes within budget.

    The budget binds the blocks together, not each one: two blocks may mix full
    AC and no AC where a plan halfway between them would recompute more. Plans
    come sorted by bytes, so any first k blocks also keep within k blocks' budget.
    """
    if copies < 1:
        raise ValueError(f"copies={copies!r} must be a positive number of blocks")
    capacity = budget_bytes(profile, budget)
    options = _plan_front(profile, capacity * copies)
    front: list[State] = [(0, 0, ())]
    for _ in range(copies):
        front = _pareto(
            [
                (used + plan.bytes, saved + profile.flops - plan.recompute_flops, (*plans, plan))
                for used, saved, plans in front
                for plan in options
                if used + plan.bytes <= capacity * copies
            ]
        )
    return tuple(sorted(front[-1][2], key=lambda plan: plan.bytes))


def _plan_front(profile: BlockProfile, capacity: int) -> list[Plan]:
    """Every plan within `capacity` that no other beats on both bytes and recompute."""
    items = candidates(profile)
    front = [(0, 0, 0)]  # (bytes, saved flops, bitmask of saved items)
    for bit, item in enumerate(items):
        grown = [
            (b + item.bytes, f + item.flops, m | 1 << bit) for b, f, m in front if b + item.bytes <= capacity
        ]
        front = _pareto(front + grown)
    plans = [
        _sac_plan(profile, [item for bit, item in enumerate(items) if mask >> bit & 1])
        for _, _, mask in front
    ]
    if profile.no_ac_bytes <= capacity:
        plans.append(_no_ac_plan(profile))
    return plans


def exhaustive(profile: BlockProfile, budget: float) -> Plan:
    """The exact optimum by trying every subset of candidate ops: the reference for tests."""
    capacity = budget_bytes(profile, budget)
    items = candidates(profile)
    if len(items) > MAX_EXHAUSTIVE:
        raise ValueError(f"exhaustive search over {len(items)} ops; at most {MAX_EXHAUSTIVE} are allowed")
    best: tuple[int, int, tuple[Item, ...]] = (0, 0, ())
    for size in range(1, len(items) + 1):
        for subset in itertools.combinations(items, size):
            used = sum(item.bytes for item in subset)
            saved = sum(item.flops for item in subset)
            if used <= capacity and (saved, -used) > (best[0], -best[1]):
                best = (saved, used, subset)
    plan = _sac_plan(profile, list(best[2]))
    if profile.no_ac_bytes <= capacity and (plan.recompute_flops, plan.bytes) > (0, profile.no_ac_bytes):
        return _no_ac_plan(profile)
    return plan


def _pareto(states: list[State]) -> list[State]:
    """Drop states that hold more bytes for no more flops; merge buckets past MAX_FRONT."""
    states.sort(key=lambda s: (s[0], -s[1]))
    front: list[State] = []
    for state in states:
        if not front or state[1] > front[-1][1]:
            front.append(state)
    if len(front) <= MAX_FRONT:
        return front
    width = front[-1][0] / MAX_FRONT
    buckets: dict[int, State] = {}
    for state in front:  # flops increase along the front: the last state of a bucket is its best
        buckets[int(state[0] / width)] = state
    return list(buckets.values())


def _no_ac_plan(profile: BlockProfile) -> Plan:
    return Plan(checkpoint=False, saved=frozenset(), bytes=profile.no_ac_bytes, recompute_flops=0)


def _sac_plan(profile: BlockProfile, saved: list[Item]) -> Plan:
    flops = profile.flops - sum(item.flops for item in saved)
    keys = frozenset(key for item in saved for key in item.keys)
    return Plan(True, keys, sum(item.bytes for item in saved), flops)
