"""The per-op selective checkpointing (op-SAC) policy.

Compute-intensive ops are saved and cheap ops recomputed, except that every
second matmul of a block is recomputed too (halving matmul activations),
matmuls whose weight has the shape of a forced `nn.Linear` are recomputed
(`PREFER_RECOMPUTE`, as torchtitan), a device-to-CPU copy is saved (an
offloaded activation, or metadata a recompute would sync for again), and every
op that draws random numbers is recomputed (see `ac.rng`: a saved random op
would shift the stream of those recomputed after it). Ops named in
`BlockNames` are saved or recomputed by name first (`ac.names`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

from ac.names import Namer, Scopes, matches, unmatched
from ac.rng import draws_random
from ac.warn import warn_at_caller

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
    "aten._scaled_dot_product_attention_math.default",
)

# Ops registered only when their package is imported (FlexAttention's higher-order op,
# varlen attention, regional inductor's compiled code, expert-parallel dispatch kernels):
# looked up on each forward's policy, so a model that imports them after `ac` still
# gets them saved. A name without an overload is a higher-order op.
_LATE_SAVED_OPS = (
    "higher_order.flex_attention",
    "higher_order.inductor_compiled_code",
    "torch_attn._varlen_attn.default",
    "deepep.dispatch.default",
    "deepep.combine.default",
    "hybridep.dispatch.default",
    "hybridep.combine.default",
)

Shape = tuple[int, ...]
PolicyFn = Callable[..., CheckpointPolicy]


def lookup_op(qualified_name: str) -> Any:
    """The op overload `namespace.op.overload` (or the op `namespace.op`), or None where
    this torch build, or the packages imported so far, lack it."""
    namespace, name, *overload = qualified_name.split(".")
    packet = getattr(getattr(torch.ops, namespace), name, None)
    if not overload:
        return packet
    return getattr(packet, overload[0], None)  # None when the packet is missing too


def _default_compute_intensive_ops() -> list[Any]:
    try:
        from torch._functorch.partitioners import get_default_op_list
    except ImportError:  # pragma: no cover - private API moved
        return [aten.mm, aten.bmm, aten.addmm, aten.convolution]
    return list(get_default_op_list().compute_intensive_ops)


@functools.cache
def built_in_saved_ops() -> frozenset[Any]:
    """The saved ops torch registers on import, found once per process."""
    packets = _default_compute_intensive_ops()
    ops = {getattr(packet, name) for packet in packets for name in packet.overloads()}
    ops.update(op for op in map(lookup_op, _EXTRA_SAVED_OPS) if op is not None)
    return frozenset(ops)


def saved_ops() -> frozenset[Any]:
    """Every op op-SAC saves on any backend this torch build (and what is imported) has."""
    late = (op for op in map(lookup_op, _LATE_SAVED_OPS) if op is not None)
    return built_in_saved_ops().union(late)


def is_copy_to_cpu(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call copies a tensor from an accelerator to the CPU."""
    if func is not aten._to_copy.default or "device" not in kwargs:
        return False
    source = args[0].device.type
    return source not in ("cpu", "meta") and torch.device(kwargs["device"]).type == "cpu"


class BlockNames:
    """One block's op-output names to save or recompute (`ac.names`), and the check, on
    its first forward, that every pattern names some op."""

    def __init__(self, block: nn.Module, save: Iterable[str], recompute: Iterable[str]) -> None:
        self.scopes = Scopes(block)
        self.save, self.recompute = tuple(save), tuple(recompute)
        self.seen: list[str] | None = []  # the first forward's names; None once checked

    def decide(self, name: str, first: bool = True) -> CheckpointPolicy | None:
        """MUST_SAVE or MUST_RECOMPUTE for a named op, else None; `first`: a forward's
        (not a recompute's) decision, recorded for the first-forward check."""
        if first and self.seen is not None:
            self.seen.append(name)
        if matches(name, self.save):
            return CheckpointPolicy.MUST_SAVE
        if matches(name, self.recompute):
            return CheckpointPolicy.MUST_RECOMPUTE
        return None

    def check_first_forward(self, block_type: str) -> None:
        """Warn about patterns that named no op of the first forward; later forwards pay nothing."""
        if not self.seen:  # checked already, or a forward without grad: nothing seen
            return
        for field, patterns in (
            ("per_op_sac_save_names", self.save),
            ("per_op_sac_recompute_names", self.recompute),
        ):
            missing = unmatched(patterns, self.seen)
            if missing:
                warn_at_caller(
                    f"{field} patterns {missing} match no op output of a {block_type} block; they have "
                    "no effect there (ac.names.op_names(block, *inputs) lists its names)"
                )
        self.seen = None


def _weight_shape(func: Any, args: tuple[Any, ...]) -> Shape | None:
    """Shape (in, out) of the weight operand of a matmul, as a Linear would use it."""
    if func is aten.mm.default:
        return tuple(args[1].shape)
    if func is aten.addmm.default:
        return tuple(args[2].shape)
    if func is aten.linear.default:
        return tuple(reversed(args[1].shape))
    return None


def make_op_sac_policy(forced_shapes: Iterable[Shape], names: BlockNames | None = None) -> PolicyFn:
    """A fresh policy for one checkpointed forward; its counters die with it.

    `names`: ops named there are decided by name (after random ops, which are always
    recomputed) and do not count toward the every-second-matmul rule.
    """
    forced = frozenset(tuple(s) for s in forced_shapes)
    save = saved_ops()
    matmul_count: Counter[bool] = Counter()
    # Older torch also calls the policy while recomputing: name its ops apart.
    namers = {flag: Namer(names.scopes) for flag in (False, True)} if names else {}

    def policy(ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        name = namers[ctx.is_recompute].name(func) if names else None
        if draws_random(func, args, kwargs):
            return CheckpointPolicy.MUST_RECOMPUTE
        if name is not None:
            decided = names.decide(name, first=not ctx.is_recompute)
            if decided is not None:
                return decided
        if is_copy_to_cpu(func, args, kwargs):
            return CheckpointPolicy.MUST_SAVE
        if func in MATMUL_OPS:
            if _weight_shape(func, args) in forced:
                return CheckpointPolicy.PREFER_RECOMPUTE
            # Older torch also calls the policy while recomputing: count apart.
            matmul_count[ctx.is_recompute] += 1
            if matmul_count[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        if func in save:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy
