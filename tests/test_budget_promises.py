"""memory_budget promises no other test pinned: a sub-module plan that raises leaves the
children as they were, profiling leaves buffers as one forward would, and a block's random
ops are saved or recomputed together even when they carry flops and storage."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ac import ACConfig, apply_ac
from ac.budget.checkpoint import run_plan
from ac.budget.profile import profile_block
from ac.budget.solver import MODULES, Plan, candidates, solve
from tests.random_ops import noisy_dropout

pytestmark = pytest.mark.tiers("cpu")
DIM = 16


class Failing(Exception):
    pass


class ParentThatRaises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(DIM, DIM)
        self.fail = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        if self.fail:
            raise Failing("the block's own forward fails after its child ran")
        return h.relu()


def test_a_sub_module_plan_that_raises_leaves_the_children_unwrapped_and_working():
    block = ParentThatRaises()
    plan = Plan(MODULES, bytes=0, recompute_flops=0, seconds=0.0, children=frozenset({"inner"}))
    x = torch.randn(4, DIM, requires_grad=True)
    with pytest.raises(Failing):
        run_plan(plan, {}, block, x)
    assert "forward" not in vars(block.inner)  # the class's forward again, no wrapper left
    reference = copy.deepcopy(block)
    block.fail = reference.fail = False
    run_plan(plan, {}, block, x).sum().backward()
    expected = reference(x.detach().requires_grad_()).relu()
    assert torch.equal(block(x), expected)
    assert "forward" not in vars(block.inner)
    assert block.inner.weight.grad is not None


class NormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, DIM)
        self.norm = nn.BatchNorm1d(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)).relu()


class NormModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(i): NormBlock() for i in range(2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers.values():
            x = block(x)
        return x


def test_the_timed_profile_leaves_running_statistics_as_one_forward_would():
    torch.manual_seed(0)
    plain = NormModel()
    budgeted = apply_ac(copy.deepcopy(plain), ACConfig(mode="memory_budget", memory_budget=0.5))
    x = torch.randn(8, DIM)
    plain(x)
    budgeted(x.requires_grad_())  # the first call profiles each block for real, timed
    want = dict(plain.named_buffers())
    got = {name.replace("_checkpoint_wrapped_module.", ""): b for name, b in budgeted.named_buffers()}
    assert want.keys() == got.keys()
    for name, buffer in want.items():
        assert torch.equal(got[name], buffer), name
    assert int(want["layers.0.norm.num_batches_tracked"]) == 1


class AttentionLikeBlock(nn.Module):
    """Two random ops that each carry flops and an output of their own, like fused attention."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = noisy_dropout(self.a(x), 0.3)
        h, _ = noisy_dropout(self.b(h), 0.3)
        return self.c(h).relu()


def test_random_ops_that_carry_flops_and_storage_are_one_knapsack_item():
    block = AttentionLikeBlock()
    profile = profile_block(block, (torch.randn(32, DIM, requires_grad=True),), {})
    random_keys = frozenset((op.op, op.index) for op in profile.ops if op.random)
    assert len(random_keys) == 2
    assert all(op.flops > 0 and op.bytes > 0 for op in profile.ops if op.random)
    holding_random = [item.keys & random_keys for item in candidates(profile)]
    assert [keys for keys in holding_random if keys] == [random_keys]
    for budget in (0.2, 0.4, 0.6, 0.8, 1.0):
        for plan in solve(profile, budget, copies=2):
            assert plan.saved & random_keys in (frozenset(), random_keys), (budget, plan)
