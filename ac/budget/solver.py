"""Choose how to run a block within a memory budget, at the least step time.

A plan is one of: no AC (holds `no_ac_bytes`, recomputes nothing); plain
checkpointing of the whole block (full AC) or of some of its direct children
(e.g. its attention or its MoE), which needs no dispatch mode; or selective
checkpointing (SAC) that saves chosen ops. Under SAC a block holds exactly the
outputs of the ops it saves (plus its inputs, held with or without AC) and
backward re-runs every other op once; the ops that draw random numbers are one
item, saved together or recomputed together (see `ac.rng`). Which ops to save
is a 0/1 knapsack that keeps the most recompute time within the budget.

Plans are priced in seconds (`ac.budget.costs`): recomputed flops and ops, and
for SAC the dispatch mode's cost on every op, so at equal memory a plan without
a dispatch mode wins. Identical blocks share one budget (see `solve`), which
lets them mix plans.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from ac.budget.costs import COMPILED, DeviceCosts
from ac.budget.profile import BlockProfile, OpCost
from ac.config import check_memory_budget

OpKey = tuple[torch._ops.OpOverload, int]
# (bytes held, value: higher is better, recompute flops, what achieves them)
State = tuple[int, float, int, Any]

# Largest Pareto front the knapsack keeps per step; beyond it, states are
# merged into byte buckets (still feasible, no longer guaranteed optimal).
MAX_FRONT = 4096
# Largest number of candidate ops `exhaustive` accepts (2**n subsets).
MAX_EXHAUSTIVE = 20
# Most direct children whose subsets are tried as sub-module plans (2**n plans).
MAX_CHILDREN = 8
# Plans whose priced times differ by less than this share of full AC's recompute time are
# a tie (op times are measured, and two runs differ by more): the one with fewer
# recompute flops wins, so a model's plans do not flip with timing noise.
NEAR_TIE = 0.05

NONE, FULL, MODULES, SAC = "none", "full", "modules", "sac"


@dataclass(frozen=True)
class Item:
    """What the knapsack saves or recomputes as one: an op, or a block's random ops together."""

    keys: frozenset[OpKey]
    flops: int
    bytes: int


@dataclass(frozen=True)
class Plan:
    kind: str  # NONE, FULL, MODULES (checkpoint `children`) or SAC (save `saved`)
    bytes: int
    recompute_flops: int
    seconds: float  # estimated step time over no AC's
    saved: frozenset[OpKey] = frozenset()
    children: frozenset[str] = frozenset()


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


def solve(
    profile: BlockProfile,
    budget: float,
    copies: int = 1,
    costs: DeviceCosts = COMPILED,
    module_plans: bool = False,
) -> tuple[Plan, ...]:
    """Plans for `copies` blocks with this profile: least estimated time, bytes within budget.

    The budget binds the blocks together, not each one: two blocks may mix full
    AC and no AC where a plan halfway between them would cost more. Plans come
    sorted by bytes, so any first k blocks also keep within k blocks' budget.
    `module_plans` adds sub-module checkpointing (eager only).
    """
    if copies < 1:
        raise ValueError(f"copies={copies!r} must be a positive number of blocks")
    capacity = budget_bytes(profile, budget) * copies
    tie = near_tie_s(profile, costs)
    options = plans(profile, capacity, costs, module_plans)
    front: list[State] = [(0, 0.0, 0, ())]
    for _ in range(copies):
        front = _pareto(
            [
                (used + plan.bytes, value - plan.seconds, flops + plan.recompute_flops, (*chosen, plan))
                for used, value, flops, chosen in front
                for plan in options
                if used + plan.bytes <= capacity
            ],
            tie * copies,
        )
    best = max(state[1] for state in front)
    near = [state for state in front if state[1] >= best - tie * copies]
    # Fewest recompute flops, then fastest, then fewest dispatch-mode plans, then least memory.
    chosen = min(near, key=lambda s: (s[2], -s[1], sum(p.kind == SAC for p in s[3]), s[0]))[3]
    return tuple(sorted(chosen, key=lambda plan: plan.bytes))


def near_tie_s(profile: BlockProfile, costs: DeviceCosts) -> float:
    """Seconds within which two plans of one block are a tie (see NEAR_TIE)."""
    return NEAR_TIE * _full_plan(profile, costs).seconds


def plans(profile: BlockProfile, capacity: int, costs: DeviceCosts, module_plans: bool) -> list[Plan]:
    """Every plan within `capacity` that no other beats on both bytes and time.

    Plans without a dispatch mode come first, so they win ties with SAC plans.
    """
    options = [_full_plan(profile, costs)]
    if module_plans and len(profile.children) <= MAX_CHILDREN:
        for size in range(1, len(profile.children)):
            for children in itertools.combinations(profile.children, size):
                plan = _modules_plan(profile, frozenset(children), costs)
                if plan.bytes <= capacity:
                    options.append(plan)
    if profile.no_ac_bytes <= capacity:
        options.append(_no_ac_plan(profile))
    pricing = _SacPricing(profile, costs)
    options += [pricing.plan(saved) for saved in _sac_front(profile, capacity, costs)]
    front = _pareto(
        [(plan.bytes, -plan.seconds, plan.recompute_flops, plan) for plan in options],
        near_tie_s(profile, costs),
    )
    return [plan for *_, plan in front]


class _SacPricing:
    """SAC plans of one block priced with one set of costs; each op is priced once."""

    def __init__(self, profile: BlockProfile, costs: DeviceCosts) -> None:
        self.profile = profile
        self.ops = {(op.op, op.index): op for op in profile.ops}
        self.all_s = costs.recompute_s(profile.ops)
        # The dispatch mode sees every op twice: in forward and in the recompute.
        self.fixed_s = len(profile.ops) * costs.sac_dispatch_s + costs.region_s
        self.costs = costs
        self._values: dict[Item, float] = {}

    def value(self, item: Item) -> float:
        """Seconds a plan saves by keeping `item` instead of recomputing it."""
        if item not in self._values:
            self._values[item] = self.costs.recompute_s(self.ops[key] for key in item.keys)
        return self._values[item]

    def plan(self, saved: list[Item]) -> Plan:
        keys = frozenset(key for item in saved for key in item.keys)
        seconds = self.all_s - sum(map(self.value, saved)) + self.fixed_s
        flops = self.profile.flops - sum(item.flops for item in saved)
        return Plan(SAC, sum(item.bytes for item in saved), flops, seconds, saved=keys)


def _sac_front(profile: BlockProfile, capacity: int, costs: DeviceCosts) -> list[list[Item]]:
    """Sets of items to save that no other set beats on both bytes and recompute time."""
    items = candidates(profile)
    pricing = _SacPricing(profile, costs)
    tie = near_tie_s(profile, costs)
    # (bytes, saved seconds, recompute flops, bitmask of saved items)
    front: list[State] = [(0, 0.0, profile.flops, 0)]
    for bit, item in enumerate(items):
        value = pricing.value(item)
        grown = [
            (b + item.bytes, v + value, f - item.flops, m | 1 << bit)
            for b, v, f, m in front
            if b + item.bytes <= capacity
        ]
        front = _pareto(front + grown, tie)
    return [[item for bit, item in enumerate(items) if mask >> bit & 1] for *_, mask in front]


def exhaustive(profile: BlockProfile, budget: float, costs: DeviceCosts = COMPILED) -> Plan:
    """The fastest SAC or no-AC plan by trying every subset of candidate ops: the reference for tests."""
    capacity = budget_bytes(profile, budget)
    items = candidates(profile)
    if len(items) > MAX_EXHAUSTIVE:
        raise ValueError(f"exhaustive search over {len(items)} ops; at most {MAX_EXHAUSTIVE} are allowed")
    pricing = _SacPricing(profile, costs)
    subsets = (
        itertools.compress(items, mask) for mask in itertools.product((False, True), repeat=len(items))
    )
    fitting = (plan for plan in map(pricing.plan, map(list, subsets)) if plan.bytes <= capacity)
    best = min(fitting, key=lambda plan: (plan.seconds, plan.bytes))
    if profile.no_ac_bytes <= capacity and best.seconds > 0:
        return _no_ac_plan(profile)
    return best


def _pareto(states: list[State], tie: float = 0.0) -> list[State]:
    """Drop states that hold more bytes for no more value, but keep one within `tie` of
    the best value so far that recomputes fewer flops than it (the near-tie the final
    choice prefers); merge buckets past MAX_FRONT."""
    states.sort(key=lambda s: (s[0], -s[1], s[2]))
    front: list[State] = []
    best = -math.inf
    near: list[State] = []  # kept states within `tie` of the best value so far
    for state in states:
        if state[1] > best:
            best = state[1]
            near = [s for s in near if s[1] >= best - tie]
        elif not (state[1] >= best - tie and state[2] < min(s[2] for s in near)):
            continue
        near.append(state)
        front.append(state)
    if len(front) <= MAX_FRONT:
        return front
    width = front[-1][0] / MAX_FRONT
    buckets: dict[int, State] = {}
    for state in front:  # keep each bucket's best value
        key = int(state[0] / width)
        if key not in buckets or state[1] > buckets[key][1]:
            buckets[key] = state
    return list(buckets.values())


def _no_ac_plan(profile: BlockProfile) -> Plan:
    return Plan(NONE, profile.no_ac_bytes, 0, 0.0)


def _full_plan(profile: BlockProfile, costs: DeviceCosts) -> Plan:
    return Plan(FULL, 0, profile.flops, costs.recompute_s(profile.ops) + costs.region_s)


def _modules_plan(profile: BlockProfile, children: frozenset[str], costs: DeviceCosts) -> Plan:
    ops = [op for op in profile.ops if op.scope in children]
    seconds = costs.recompute_s(ops) + len(children) * costs.region_s
    flops = sum(op.flops for op in ops)
    return Plan(MODULES, profile.held_with_checkpointed(children), flops, seconds, children=children)
