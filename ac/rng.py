"""Random ops and activation checkpointing.

Eager checkpointing replays a region's random numbers by restoring the RNG
state once, at the start of the recompute, and never re-runs an op whose
output it saved. So a region is exact only when its random ops are recomputed
together (with `preserve_rng_state`) or saved together: a saved op that drew
numbers shifts the stream of every random op recomputed after it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Attention ops draw their dropout mask only when this argument is non-zero
# (CPU: measured; CUDA flash/efficient/cuDNN: the kernels take a Philox offset
# only for dropout). A `p` argument is no such promise: CPU's native_dropout and
# bernoulli_ advance the generator even at p=0.
_DROPOUT_ARGUMENT = "dropout_p"


def draws_random(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call of `func` draws from a random generator."""
    if torch.Tag.nondeterministic_seeded not in getattr(func, "tags", ()):
        return False
    for position, argument in enumerate(func._schema.arguments):
        if argument.name == _DROPOUT_ARGUMENT:
            value = args[position] if position < len(args) else kwargs.get(argument.name, 0.0)
            return value != 0
    return True


class RandomOpWarning:
    """Warns once when a block that draws random numbers does not preserve RNG state.

    Without `preserve_rng_state` the recompute draws fresh numbers, so the
    gradients are wrong. Only the block's first eager training forward is
    watched (a dispatch mode for that one call): later steps pay nothing.
    """

    def __init__(self, block_name: str) -> None:
        self.block_name = block_name
        self.watched = False
        self.warned = False

    def check(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Warn, once, if this op draws random numbers."""
        if not self.warned and draws_random(func, args, kwargs):
            self.warned = True
            # Raised from torch's dispatch, deep under the user's forward: no caller frame is
            # theirs, so it is attributed to this module (`-W ignore::UserWarning:ac.rng`).
            warnings.warn_explicit(
                f"activation checkpointing of block {self.block_name!r}: op {func} draws random numbers "
                "and preserve_rng_state=False, so the recompute draws different ones and the "
                "gradients are wrong; set preserve_rng_state=True",
                UserWarning,
                filename=__file__,
                lineno=sys._getframe().f_lineno,
                module=__name__,
            )

    def first_forward(self) -> contextlib.AbstractContextManager[Any]:
        """Watches the ops of the first training forward outside torch.compile; nothing afterwards.

        Compiled regions need no warning: the partitioner does not recompute random ops.
        """
        if self.watched or torch.compiler.is_compiling() or not torch.is_grad_enabled():
            return contextlib.nullcontext()
        self.watched = True
        return _Watch(self)


class _Watch(TorchDispatchMode):
    def __init__(self, warning: RandomOpWarning) -> None:
        super().__init__()
        self.warning = warning

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        self.warning.check(func, args, kwargs)
        return func(*args, **kwargs)
