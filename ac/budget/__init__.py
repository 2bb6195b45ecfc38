"""`memory_budget` mode: profile each block, price its plans in time, keep the fastest within budget.

profile = profile_block(block, args, kwargs)   # flops, bytes and scope per op, on fake tensors
plans = solve(profile, budget=0.5)             # no AC, full, sub-module or op-level SAC plans
"""

from ac.budget.checkpoint import BudgetCheckpoint, ChosenPlan
from ac.budget.profile import BlockProfile, profile_block
from ac.budget.solver import Plan, solve

__all__ = ["BlockProfile", "BudgetCheckpoint", "ChosenPlan", "Plan", "profile_block", "solve"]
