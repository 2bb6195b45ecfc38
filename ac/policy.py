"""The per-op selective checkpointing (op-SAC) policy.

Compute-intensive ops are saved and cheap ops recomputed, except that every
second matmul of a block is recomputed too (halving matmul activations),
matmuls whose weight has the shape of a forced `nn.Linear` are always
recomputed, and every op that draws random numbers is recomputed (see
`ac.rng`: a saved random op would shift the stream of those recomputed after it).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

from ac.rng import draws_random

aten = torch.ops.aten

MATMUL_OPS = frozenset({aten.mm.default, aten.addmm.default, aten.linear.default})

# Op overloads saved beyond torch's default compute-intensive list, which names
# only CUDA's attention ops: every SDPA backend's forward op is named so a
# policy decides alike on CPU and on CUDA. `aten.max.default` (a whole-tensor
# max, e.g. an fp8 scale) is saved, but not `max.dim`, whose indices a router
# would hold; `aten.topk` is saved because a recomputed top-k may route tokens
# to other experts. These follow torchtitan's save set.
_EXTRA_SAVED_OPS = (
    "aten.linear.default",
    "aten.max.default",
    "aten.topk.default",
    "aten._scaled_dot_product_flash_attention.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_cudnn_attention.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_fused_attention_overrideable.default",
    "aten._flash_attention_forward.default",
    "aten._efficient_attention_forward.default",
    "_c10d_functional.reduce_scatter_tensor.default",
    "_c10d_functional.all_to_all_single.default",
)

Shape = tuple[int, ...]
PolicyFn = Callable[..., CheckpointPolicy]


def lookup_op(qualified_name: str) -> torch._ops.OpOverload | None:
    """The op overload `namespace.op.overload`, or None where this torch build lacks it."""
    namespace, name, overload = qualified_name.split(".")
    packet = getattr(getattr(torch.ops, namespace), name, None)
    return getattr(packet, overload, None)  # None when the packet is missing too


def _default_compute_intensive_ops() -> list[Any]:
    try:
        from torch._functorch.partitioners import get_default_op_list
    except ImportError:  # pragma: no cover - private API moved
        return [aten.mm, aten.bmm, aten.addmm, aten.convolution]
    return list(get_default_op_list().compute_intensive_ops)


@functools.cache
def saved_ops() -> frozenset[torch._ops.OpOverload]:
    """Every op overload op-SAC saves on any backend this torch build has."""
    packets = _default_compute_intensive_ops()
    ops = {getattr(packet, name) for packet in packets for name in packet.overloads()}
    ops.update(op for op in map(lookup_op, _EXTRA_SAVED_OPS) if op is not None)
    return frozenset(ops)


def _weight_shape(func: Any, args: tuple[Any, ...]) -> Shape | None:
    """Shape (in, out) of the weight operand of a matmul, as a Linear would use it."""
    if func is aten.mm.default:
        return tuple(args[1].shape)
    if func is aten.addmm.default:
        return tuple(args[2].shape)
    if func is aten.linear.default:
        return tuple(reversed(args[1].shape))
    return None


def make_op_sac_policy(forced_shapes: Iterable[Shape]) -> PolicyFn:
    """A fresh policy for one checkpointed forward; its counters die with it."""
    forced = frozenset(tuple(s) for s in forced_shapes)
    save = saved_ops()
    matmul_count: Counter[bool] = Counter()

    def policy(ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if draws_random(func, args, kwargs):
            return CheckpointPolicy.MUST_RECOMPUTE
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
