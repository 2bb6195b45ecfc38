"""`BudgetCheckpoint`: the checkpoint function of `memory_budget` mode.

On a block's first call it profiles the block on fake tensors (cached by
block signature), solves the knapsack, and runs selective checkpointing that
saves exactly the chosen ops, named by (op, index within the forward).

Under torch.compile the same plan is used, as a SAC region that compile
honours: the plan is made eagerly, outside the traced graph (the profile needs
real dispatch), and the region's policy tags the graph. torch's own
`activation_memory_budget` partitioner is not used: it recomputes random ops
with fresh random numbers (pytorch issue 190758).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    SelectiveCheckpointContext,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from ac.budget.profile import ProfileCache, structure
from ac.budget.solver import OpKey, Plan, check_budget, solve


def make_budget_policy(saved: frozenset[OpKey]) -> Callable[..., CheckpointPolicy]:
    """A fresh policy for one checkpointed forward: save exactly the ops in `saved`."""
    calls: Counter[tuple[bool, Any]] = Counter()

    def policy(ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        # Older torch also calls the policy while recomputing: count apart.
        index = calls[ctx.is_recompute, func]
        calls[ctx.is_recompute, func] += 1
        return CheckpointPolicy.MUST_SAVE if (func, index) in saved else CheckpointPolicy.MUST_RECOMPUTE

    return policy


def _budget_contexts(saved: frozenset[OpKey]) -> Any:
    return create_selective_checkpoint_contexts(make_budget_policy(saved))


class BudgetCheckpoint:
    """A `checkpoint_fn` for `checkpoint_wrapper`; one instance serves all blocks of a model.

    `blocks` are the model's blocks: those of one structure share one budget and
    may take different plans (the k-th of n gets the k-th of `solve`'s n plans).
    Blocks of one structure are assumed to get inputs of one shape; where they
    do not, the first k of them still keep within k blocks' budget.
    """

    def __init__(self, budget: float, blocks: Iterable[nn.Module] = ()) -> None:
        self.budget = check_budget(budget)
        self.profiles = ProfileCache()
        self._plans: dict[tuple[int, int], tuple[Plan, ...]] = {}
        groups: dict[tuple[Any, ...], list[nn.Module]] = {}
        for block in blocks:
            groups.setdefault(structure(block), []).append(block)
        self._places = {id(b): (k, len(group)) for group in groups.values() for k, b in enumerate(group)}

    def plan(self, block: nn.Module, *args: Any, **kwargs: Any) -> Plan:
        """The plan for `block` called with these inputs."""
        profile = self.profiles.get(block, args, kwargs)
        place, copies = self._places.get(id(block), (0, 1))
        plans = self._plans.get((id(profile), copies))
        if plans is None:
            plans = self._plans[id(profile), copies] = solve(profile, self.budget, copies)
        return plans[place]

    def __call__(
        self,
        block: nn.Module,
        *args: Any,
        preserve_rng_state: bool = True,
        early_stop: bool = True,
        determinism_check: str = "default",
        debug: bool = False,
        **kwargs: Any,
    ) -> Any:
        if not torch.is_grad_enabled():
            return block(*args, **kwargs)
        plan = _plan_outside_graph(self, block, args, kwargs)
        if not plan.checkpoint:
            return block(*args, **kwargs)
        return checkpoint(
            block,
            *args,
            use_reentrant=False,
            context_fn=functools.partial(_budget_contexts, plan.saved),
            preserve_rng_state=preserve_rng_state,
            early_stop=early_stop,
            determinism_check=determinism_check,
            debug=debug,
            **kwargs,
        )


@torch.compiler.disable(
    reason="memory_budget plans a block eagerly, on fake tensors; under fullgraph=True "
    "use ACConfig(compile=True), which compiles the planned region instead"
)
def _plan_outside_graph(
    checkpoint_fn: BudgetCheckpoint, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Plan:
    """Under torch.compile a graph break: the plan is made eagerly, then tracing resumes."""
    return checkpoint_fn.plan(block, *args, **kwargs)
