"""One class per AC mode, and the registry `apply_ac` picks from.

A mode reads its own small config from `ACConfig`, checks it against the
model before anything is wrapped (`prepare`), then wraps blocks one at a time
(`wrap`). Adding a mode is one class and one line in `REGISTRY`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper, checkpoint_wrapper
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from ac.budget import BudgetCheckpoint, ChosenPlan
from ac.config import ACConfig
from ac.policy import BlockNames, Shape, make_op_sac_policy
from ac.rng import RandomOpWarning
from ac.warn import warn_at_caller


@dataclass(frozen=True)
class CheckpointOptions:
    """What every checkpointing mode passes to `torch.utils.checkpoint`."""

    preserve_rng_state: bool
    early_stop: bool
    determinism_check: str
    debug: bool

    @classmethod
    def of(cls, config: ACConfig) -> CheckpointOptions:
        return cls(config.preserve_rng_state, config.early_stop, config.determinism_check, config.debug)


class WatchedCheckpoint:
    """A checkpoint function that warns when a block without preserved RNG state draws random numbers."""

    def __init__(self, name: str, checkpoint_fn: Any = None) -> None:
        self.warning = RandomOpWarning(name)
        self.checkpoint_fn = checkpoint_fn or functools.partial(checkpoint, use_reentrant=False)

    def __call__(self, block: nn.Module, /, *args: Any, **kwargs: Any) -> Any:
        with self.warning.first_forward():
            return self.checkpoint_fn(block, *args, **kwargs)


class ACMode:
    """A mode that leaves every block as it is; subclasses wrap some or all of them."""

    compiles_blocks: ClassVar[bool] = True  # False: the mode compiles inside its wrapper

    def __init__(self, config: ACConfig) -> None:
        self.options = CheckpointOptions.of(config)

    def prepare(self, container: nn.Module, prefix: str) -> None:
        """Check the mode against the model's blocks; raise before any block is wrapped."""

    def wrap(self, block: nn.Module, name: str, position: int) -> nn.Module:
        """The block as the model should run it; `position` counts blocks from 1."""
        return block

    def checkpointed(
        self, block: nn.Module, name: str, watch: bool = True, **wrapper_kwargs: Any
    ) -> nn.Module:
        """`block` under non-reentrant checkpointing with this mode's options.

        `watch`: warn if the block draws random numbers without preserved RNG state
        (not for a wrapper that runs compiled regions, which replay them anyway).
        """
        if watch and not self.options.preserve_rng_state:
            wrapper_kwargs["checkpoint_fn"] = WatchedCheckpoint(name, wrapper_kwargs.get("checkpoint_fn"))
        return checkpoint_wrapper(
            block,
            preserve_rng_state=self.options.preserve_rng_state,
            early_stop=self.options.early_stop,
            determinism_check=self.options.determinism_check,
            debug=self.options.debug,
            **wrapper_kwargs,
        )


class NoAC(ACMode):
    pass


class FullAC(ACMode):
    """Recompute each whole block in backward."""

    def wrap(self, block: nn.Module, name: str, position: int) -> nn.Module:
        return self.checkpointed(block, name)


class LayerSAC(ACMode):
    """Full AC on every n-th block."""

    def __init__(self, config: ACConfig) -> None:
        super().__init__(config)
        self.interval = config.layer_interval

    def wrap(self, block: nn.Module, name: str, position: int) -> nn.Module:
        return self.checkpointed(block, name) if position % self.interval == 0 else block


class OpSAC(ACMode):
    """Per-op selective checkpointing (`ac.policy`)."""

    def __init__(self, config: ACConfig) -> None:
        super().__init__(config)
        self.patterns = config.per_op_sac_force_recompute_mm_shapes_by_fqns
        self.warn_unmatched = not config.uses_default_force_recompute_fqns
        self.forced_shapes: frozenset[Shape] = frozenset()
        self.save_names = config.per_op_sac_save_names
        self.recompute_names = config.per_op_sac_recompute_names

    def prepare(self, container: nn.Module, prefix: str) -> None:
        self.forced_shapes = frozenset(self._forced_matmul_shapes(container, prefix))

    def _forced_matmul_shapes(self, container: nn.Module, prefix: str) -> set[Shape]:
        """Weight shapes (in, out) of the Linears whose matmuls are always recomputed."""
        shapes: set[Shape] = set()
        matched: set[str] = set()
        for fqn, module in container.named_modules(prefix=prefix):
            for pattern in self.patterns:
                if pattern not in fqn or fqn == prefix:
                    continue
                if not isinstance(module, nn.Linear):
                    raise ValueError(
                        f"per_op_sac_force_recompute_mm_shapes_by_fqns pattern {pattern!r} matches "
                        f"{fqn!r}, a {type(module).__name__}; only nn.Linear modules are allowed"
                    )
                matched.add(pattern)
                shapes.add((module.in_features, module.out_features))
        unmatched = [p for p in dict.fromkeys(self.patterns) if p not in matched]
        if unmatched and self.warn_unmatched:
            warn_at_caller(
                f"per_op_sac_force_recompute_mm_shapes_by_fqns patterns {unmatched} match no "
                f"nn.Linear in model.{prefix}; they have no effect"
            )
        return shapes

    def wrap(self, block: nn.Module, name: str, position: int) -> nn.Module:
        if not (self.save_names or self.recompute_names):
            return self.checkpointed(
                block, name, context_fn=functools.partial(_op_sac_contexts, self.forced_shapes)
            )
        names = BlockNames(block, self.save_names, self.recompute_names)
        return self.checkpointed(
            block,
            name,
            context_fn=functools.partial(_op_sac_contexts, self.forced_shapes, names),
            checkpoint_fn=NamesChecked(names),
        )


def _op_sac_contexts(forced_shapes: frozenset[Shape], names: BlockNames | None = None) -> Any:
    return create_selective_checkpoint_contexts(make_op_sac_policy(forced_shapes, names))


class NamesChecked:
    """A checkpoint function that, after a block's first forward, warns about op-output
    name patterns that named none of its ops."""

    def __init__(self, names: BlockNames) -> None:
        self.names = names
        self.checkpoint_fn = functools.partial(checkpoint, use_reentrant=False)

    def __call__(self, block: nn.Module, /, *args: Any, **kwargs: Any) -> Any:
        out = self.checkpoint_fn(block, *args, **kwargs)
        self.names.check_first_forward(type(block).__name__)
        return out


class MemoryBudgetAC(ACMode):
    """Keep activations within a budget at the least step time (`ac.budget`)."""

    compiles_blocks = False  # the plan is made eagerly; BudgetCheckpoint compiles the planned region

    def __init__(self, config: ACConfig) -> None:
        super().__init__(config)
        self.budget = config.memory_budget
        self.backend = config.compile_backend if config.compile else None
        self.checkpoint_fn: BudgetCheckpoint | None = None

    def prepare(self, container: nn.Module, prefix: str) -> None:
        blocks = {f"{prefix}.{name}": block for name, block in container.named_children()}
        self.checkpoint_fn = BudgetCheckpoint(self.budget, blocks, compile_backend=self.backend)

    def wrap(self, block: nn.Module, name: str, position: int) -> nn.Module:
        return self.checkpointed(block, name, watch=self.backend is None, checkpoint_fn=self.checkpoint_fn)


def budget_checkpoint_of(model: nn.Module) -> BudgetCheckpoint | None:
    """The `BudgetCheckpoint` serving this model's blocks (memory_budget mode), or None."""
    for module in model.modules():
        if not isinstance(module, ActivationWrapper):
            continue
        checkpoint_fn = getattr(module.checkpoint_fn, "func", None)
        if isinstance(checkpoint_fn, WatchedCheckpoint):
            checkpoint_fn = checkpoint_fn.checkpoint_fn
        if isinstance(checkpoint_fn, BudgetCheckpoint):
            return checkpoint_fn
    return None


def budget_plans(model: nn.Module) -> list[ChosenPlan]:
    """What memory_budget chose for each block and input layout so far; [] in other modes."""
    checkpoint_fn = budget_checkpoint_of(model)
    return [] if checkpoint_fn is None else checkpoint_fn.chosen()


# ACConfig.kind -> mode. A new mode: one class above, one line here.
REGISTRY: dict[str, type[ACMode]] = {
    "none": NoAC,
    "full": FullAC,
    "layer": LayerSAC,
    "op": OpSAC,
    "memory_budget": MemoryBudgetAC,
}
