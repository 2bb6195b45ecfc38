"""`BudgetCheckpoint`: the checkpoint function of `memory_budget` mode.

Eager: on a block's first call it profiles the block on fake tensors (cached
by block signature), solves the knapsack, and runs selective checkpointing
that saves exactly the chosen ops, named by (op, index within the forward).
Compiled: it runs the block as is, so torch.compile's partitioner applies
`torch._functorch.config.activation_memory_budget` to the whole graph, as
torchtitan does; a SAC region would pin its decisions and hide them from it.
"""

from __future__ import annotations

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
        if torch.compiler.is_compiling() or not torch.is_grad_enabled():
            return block(*args, **kwargs)
        plan = self.plan(block, *args, **kwargs)
        if not plan.checkpoint:
            return block(*args, **kwargs)
        return checkpoint(
            block,
            *args,
            use_reentrant=False,
            context_fn=lambda: create_selective_checkpoint_contexts(make_budget_policy(plan.saved)),
            preserve_rng_state=preserve_rng_state,
            early_stop=early_stop,
            determinism_check=determinism_check,
            debug=debug,
            **kwargs,
        )
