"""`memory_budget` mode without torch.compile: profile each block, solve a knapsack, save by op.

profile = profile_block(block, args, kwargs)   # flops and bytes per op, on fake tensors
plan = solve(profile, budget=0.5)              # which (op, index) pairs to save
"""

from ac.budget.checkpoint import BudgetCheckpoint, make_budget_policy
from ac.budget.profile import BlockProfile, OpCost, ProfileCache, profile_block
from ac.budget.solver import Plan, budget_bytes, exhaustive, solve

__all__ = [
    "BlockProfile",
    "BudgetCheckpoint",
    "OpCost",
    "Plan",
    "ProfileCache",
    "budget_bytes",
    "exhaustive",
    "make_budget_policy",
    "profile_block",
    "solve",
]
