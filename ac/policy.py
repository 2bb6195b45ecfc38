"""The per-op selective checkpointing (op-SAC) policy.

Compute-intensive ops are saved and cheap ops recomputed, except that every
second matmul of a block is recomputed too (halving matmul activations), and
matmuls whose weight has the shape of a forced `nn.Linear` are always
recomputed.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

aten = torch.ops.aten

MATMUL_OPS = frozenset({aten.mm.default, aten.addmm.default, aten.linear.default})

# Ops saved beyond torch's default compute-intensive list. Every SDPA backend's
# forward op is named so a policy decides alike on CPU and on CUDA.
_EXTRA_SAVED_OP_NAMES = (
    "aten.linear",
    "aten.max",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_fused_attention_overrideable",
    "aten._flash_attention_forward",
    "aten._efficient_attention_forward",
    "_c10d_functional.reduce_scatter_tensor",
    "_c10d_functional.all_to_all_single",
)

Shape = tuple[int, ...]
PolicyFn = Callable[..., CheckpointPolicy]


def _overloads(op: Any) -> list[torch._ops.OpOverload]:
    if isinstance(op, torch._ops.OpOverloadPacket):
        return [getattr(op, name) for name in op.overloads()]
    return [op]


def _lookup(qualified_name: str) -> Any:
    namespace, name = qualified_name.split(".")
    return getattr(getattr(torch.ops, namespace), name, None)


def _default_compute_intensive_ops() -> list[Any]:
    try:
        from torch._functorch.partitioners import get_default_op_list
    except ImportError:  # pragma: no cover - private API moved
        return [aten.mm, aten.bmm, aten.addmm, aten.convolution]
    return list(get_default_op_list().compute_intensive_ops)


@functools.cache
def saved_ops() -> frozenset[torch._ops.OpOverload]:
    """Every op overload op-SAC saves on any backend this torch build has."""
    ops = _default_compute_intensive_ops()
    ops += [op for op in map(_lookup, _EXTRA_SAVED_OP_NAMES) if op is not None]
    return frozenset(overload for op in ops for overload in _overloads(op))


def _weight_shape(func: Any, args: tuple[Any, ...]) -> Shape | None:
    """Shape (in, out) of the weight operand of a matmul, as a Linear would use it."""
    if func is aten.mm.default:
        return tuple(args[1].shape)
    if func is aten.addmm.default:
        return tuple(args[2].shape)
    if func is aten.linear.default:
        return tuple(reversed(args[1].shape))
    return None


def make_op_sac_policy(forced_shapes: Iterable[Shape], save: frozenset[Any] | None = None) -> PolicyFn:
    """A fresh policy for one checkpointed forward; its counters die with it."""
    forced = frozenset(tuple(s) for s in forced_shapes)
    save = saved_ops() if save is None else save
    matmul_count: Counter[bool] = Counter()

    def policy(ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if func in MATMUL_OPS:
            if _weight_shape(func, args) in forced:
                return CheckpointPolicy.MUST_RECOMPUTE
            # Older torch also calls the policy while recomputing: count apart.
            matmul_count[ctx.is_recompute] += 1
            if matmul_count[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.MUST_RECOMPUTE
        if func in save:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy
