"""The memory budget is a promise: every plan the solver can choose holds what it estimates
(MemTracker), each plan kind held within budget when pinned device costs make it win, and
near-tied plans are broken by recompute flops, not by timing noise."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ac.budget import BudgetCheckpoint, costs, profile_block
from ac.budget.checkpoint import run_plan
from ac.budget.profile import BlockProfile, OpCost
from ac.budget.solver import FULL, MODULES, NONE, SAC, budget_bytes, solve
from ackit import models

pytestmark = pytest.mark.tiers("cpu")

OPTIONS = {"preserve_rng_state": True, "early_stop": False}


class _Chains(nn.Module):
    """Six Linears in children of unequal size, with a residual: sub-module plans fit."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
        self.b = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 128))
        self.c = nn.Linear(128, 128)
        self.d = nn.Linear(128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.c(self.b(self.a(x)) + x))


def _chains() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Chains(), torch.randn(256, 128, requires_grad=True)


def _reference_block(name: str):
    def build() -> tuple[nn.Module, torch.Tensor]:
        built = models.build(name)
        return built.model.layers["0"], built.block_input().detach().requires_grad_()

    return build


SHAPES = {"chains": _chains, "toy": _reference_block("toy"), "moe-tiny": _reference_block("moe-tiny")}


def _held(tier, block: nn.Module, x: torch.Tensor, run) -> int:
    """Activation bytes one call holds after forward, over what full AC holds (the output's sum)."""
    return tier.activation_bytes(block, lambda: run().sum(), [x]) - _FULL_HELD


_FULL_HELD = 4  # the scalar each step's `.sum()` creates: held by every plan, full AC's included


# Prices that make one kind win: flops and dispatch free make SAC's fewer recompute flops win;
# a dispatch mode costing a second makes plain checkpointing (of children, else whole) win.
SAC_WINS = costs.DeviceCosts(flops_per_s=1e9, op_s=0.0, sac_dispatch_s=0.0, region_s=0.0, op_times=False)
NO_DISPATCH_MODE_WINS = dataclasses.replace(SAC_WINS, sac_dispatch_s=1.0, region_s=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_candidate_plan_holds_exactly_its_estimate(tier, shape):
    """Each plan the solver chooses at four budgets under both price sets (every kind)."""
    block, x = SHAPES[shape]()
    profile = profile_block(block, (x,), {})
    candidates = {
        plan
        for budget in (0.1, 0.25, 0.5, 0.75)
        for device_costs in (SAC_WINS, NO_DISPATCH_MODE_WINS)
        for plan in solve(profile, budget, 1, device_costs, module_plans=True)
    }
    assert {FULL, SAC} <= {plan.kind for plan in candidates}
    for plan in sorted(candidates, key=lambda plan: (plan.bytes, plan.kind)):
        assert _held(tier, block, x, lambda plan=plan: run_plan(plan, OPTIONS, block, x)) == plan.bytes, plan


FORCED = {
    NONE: (1.0, NO_DISPATCH_MODE_WINS, SHAPES),
    FULL: (0.1, NO_DISPATCH_MODE_WINS, SHAPES),
    MODULES: (0.5, NO_DISPATCH_MODE_WINS, ("chains", "moe-tiny")),  # the toy has no child worth it
    SAC: (0.5, SAC_WINS, SHAPES),
}


@pytest.mark.parametrize(
    ("kind", "shape"), [(kind, shape) for kind, (_, _, shapes) in FORCED.items() for shape in shapes]
)
def test_each_plan_kind_forced_by_pinned_costs_is_held_within_budget(tier, kind, shape):
    budget, device_costs, _ = FORCED[kind]
    block, x = SHAPES[shape]()
    checkpoint_fn = BudgetCheckpoint(budget, [block], device_costs=device_costs)
    checkpoint_fn(block, x, **OPTIONS).sum().backward()  # plans; MemTracker counts one call per step
    held = _held(tier, block, x, lambda: checkpoint_fn(block, x, **OPTIONS))
    [chosen] = checkpoint_fn.chosen()
    assert chosen.kind == kind
    assert held == chosen.held_bytes <= budget_bytes(checkpoint_fn.profiles.all()[0], budget)


MM = torch.ops.aten.mm.default


def _near_tie(first_s: float, second_s: float) -> BlockProfile:
    """Two matmuls of equal output size whose measured times differ by noise; the first
    costs a third of the second's flops. The budget holds one of them."""
    ops = (OpCost(MM, 0, 100, 10, seconds=first_s), OpCost(MM, 1, 300, 10, seconds=second_s))
    return BlockProfile(ops, no_ac_bytes=20)


@pytest.mark.parametrize(
    ("first_s", "second_s"), [(1.0e-3, 0.99e-3), (0.99e-3, 1.0e-3)], ids=["first-slower", "second-slower"]
)
def test_a_near_tie_is_broken_by_fewer_recompute_flops_whatever_the_noise(first_s, second_s):
    timed = dataclasses.replace(SAC_WINS, op_times=True)
    [plan] = solve(_near_tie(first_s, second_s), 0.5, costs=timed)
    assert (plan.kind, plan.saved, plan.recompute_flops) == (SAC, frozenset({(MM, 1)}), 100)


def test_a_real_difference_in_time_is_not_a_tie():
    timed = dataclasses.replace(SAC_WINS, op_times=True)
    [plan] = solve(_near_tie(2e-3, 1e-3), 0.5, costs=timed)
    assert plan.saved == frozenset({(MM, 0)})  # the slow op is saved, though it has fewer flops
