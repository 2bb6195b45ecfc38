"""`apply_ac`: wrap the transformer blocks of a model as an `ACConfig` says."""

from __future__ import annotations

import functools
import warnings
from typing import Any

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    ActivationWrapper,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from ac.budget import BudgetCheckpoint
from ac.config import ACConfig
from ac.policy import Shape, make_op_sac_policy
from ac.rng import RandomOpWarning

BLOCK_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def apply_ac(model: nn.Module, config: ACConfig, *, blocks: str = "layers") -> nn.Module:
    """Checkpoint each child of `model.<blocks>` in place and return `model`.

    Everything is validated before the first block is wrapped, so a bad config
    leaves the model untouched.
    """
    container = _block_container(model, blocks)
    if config.mode == "none":
        return model
    forced_shapes: set[Shape] = set()
    if config.mode == "selective" and config.layer_interval is None:
        forced_shapes = _forced_matmul_shapes(model, blocks, container, config)
    extra = {}
    if config.mode == "memory_budget":
        extra["checkpoint_fn"] = BudgetCheckpoint(config.memory_budget, container.children())
    for position, (name, block) in enumerate(list(container.named_children()), start=1):
        wrapped = _wrap_block(block, f"{blocks}.{name}", position, config, forced_shapes, extra)
        if wrapped is not block:
            container.register_module(name, wrapped)
    return model


def _block_container(model: nn.Module, blocks: str) -> nn.Module:
    try:
        container = model.get_submodule(blocks)
    except AttributeError:
        raise ValueError(
            f"model {type(model).__name__} has no block container {blocks!r}; pass "
            "blocks=<attribute path> naming its ModuleList, ModuleDict or Sequential of blocks"
        ) from None
    if not isinstance(container, BLOCK_CONTAINERS):
        allowed = ", ".join(c.__name__ for c in BLOCK_CONTAINERS)
        raise ValueError(f"model.{blocks} is a {type(container).__name__}; expected one of {allowed}")
    wrapped = [name for name, child in container.named_children() if isinstance(child, ActivationWrapper)]
    if wrapped:
        raise ValueError(
            f"blocks {wrapped} of model.{blocks} are already checkpointed; apply_ac once per model"
        )
    return container


def _forced_matmul_shapes(
    model: nn.Module, blocks: str, container: nn.Module, config: ACConfig
) -> set[Shape]:
    """Weight shapes (in, out) of the Linears that op-SAC must recompute."""
    shapes: set[Shape] = set()
    patterns = config.per_op_sac_force_recompute_mm_shapes_by_fqns
    matched = dict.fromkeys(patterns, False)
    for block_name, block in container.named_children():
        for fqn, module in block.named_modules(prefix=f"{blocks}.{block_name}"):
            for pattern in patterns:
                if pattern not in fqn:
                    continue
                if not isinstance(module, nn.Linear):
                    raise ValueError(
                        f"per_op_sac_force_recompute_mm_shapes_by_fqns pattern {pattern!r} matches "
                        f"{fqn!r}, a {type(module).__name__}; only nn.Linear modules are allowed"
                    )
                matched[pattern] = True
                shapes.add((module.in_features, module.out_features))
    unmatched = [p for p, hit in matched.items() if not hit]
    if unmatched and not config.uses_default_force_recompute_fqns:
        warnings.warn(
            f"per_op_sac_force_recompute_mm_shapes_by_fqns patterns {unmatched} match no "
            f"nn.Linear in model.{blocks}; they have no effect",
            UserWarning,
            stacklevel=3,
        )
    return shapes


def _wrap_block(
    block: nn.Module,
    name: str,
    position: int,
    config: ACConfig,
    forced_shapes: set[Shape],
    extra: dict[str, Any],
) -> nn.Module:
    if config.mode in ("full", "memory_budget"):
        return _checkpoint(block, name, config, **extra)
    interval = config.layer_interval
    if interval is not None:
        return _checkpoint(block, name, config) if position % interval == 0 else block
    return _checkpoint(
        block, name, config, context_fn=functools.partial(_op_sac_contexts, frozenset(forced_shapes))
    )


def _op_sac_contexts(forced_shapes: frozenset[Shape]) -> Any:
    return create_selective_checkpoint_contexts(make_op_sac_policy(forced_shapes))


class WatchedCheckpoint:
    """A checkpoint function that warns when a block without preserved RNG state draws random numbers."""

    def __init__(self, name: str, checkpoint_fn: Any = None) -> None:
        self.warning = RandomOpWarning(name)
        self.checkpoint_fn = checkpoint_fn or functools.partial(checkpoint, use_reentrant=False)

    def __call__(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with self.warning.first_forward():
            return self.checkpoint_fn(block, *args, **kwargs)


def _checkpoint(block: nn.Module, name: str, config: ACConfig, **extra: Any) -> nn.Module:
    if not config.preserve_rng_state:
        extra["checkpoint_fn"] = WatchedCheckpoint(name, extra.get("checkpoint_fn"))
    return checkpoint_wrapper(
        block,
        preserve_rng_state=config.preserve_rng_state,
        early_stop=config.early_stop,
        determinism_check=config.determinism_check,
        debug=config.debug,
        **extra,
    )
