"""`apply_ac`: wrap (and optionally compile) the transformer blocks of a model as an `ACConfig` says."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from ac.config import ACConfig
from ac.modes import REGISTRY
from ac.traced import backend_for

BLOCK_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def apply_ac(model: nn.Module, config: ACConfig, *, blocks: str = "layers") -> nn.Module:
    """Checkpoint each child of `model.<blocks>` in place and return `model`.

    Everything is validated before the first block is wrapped, so a bad config
    leaves the model untouched. With `config.compile`, each block is compiled
    after it is wrapped (torchtitan's order).
    """
    container = _block_container(model, blocks)
    mode = REGISTRY[config.kind](config)
    mode.prepare(container, blocks)
    for position, (name, block) in enumerate(list(container.named_children()), start=1):
        wrapped = mode.wrap(block, f"{blocks}.{name}", position)
        if config.compile and mode.compiles_blocks:
            wrapped.compile(backend=backend_for(config.compile_backend), fullgraph=True)
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
