"""Profile one block's forward: what each op costs to recompute and to keep.

The block runs once on fake tensors (no real compute, no real memory), so a
profile costs milliseconds. Each dispatched op records its flops (torch's
flop-counter formulas, the same ones `FlopCounterMode` uses) and the bytes of
the storages it creates; autograd's saved-tensor hooks record what the block
would hold without AC. Blocks whose forward depends on data (`nonzero`,
`.item()`) cannot run on fake tensors and are profiled once on real ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.utils.flop_counter import flop_registry

from ac.rng import draws_random

_NOT_FAKEABLE = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)


@dataclass(frozen=True)
class OpCost:
    """One op of a block's forward, named by (op, index among that op's calls)."""

    op: torch._ops.OpOverload
    index: int
    flops: int
    bytes: int  # storages this op creates; 0 when its outputs alias existing ones
    random: bool = False  # draws random numbers (see `ac.rng`)


@dataclass(frozen=True)
class BlockProfile:
    ops: tuple[OpCost, ...]
    no_ac_bytes: int  # activation bytes autograd holds for this block without AC

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []
        self.created: dict[StorageWeakRef, int] = {}
        self._calls: Counter[torch._ops.OpOverload] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        cost = OpCost(
            func,
            self._calls[func],
            flops,
            self._new_storage_bytes(func, out),
            draws_random(func, args, kwargs),
        )
        self.ops.append(cost)
        self._calls[func] += 1
        return out

    def _new_storage_bytes(self, func: Any, out: Any) -> int:
        """Bytes of output storages seen for the first time and not aliasing an input."""
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        returns = func._schema.returns
        # A single `Tensor[]` return describes every tensor of the list.
        pairs = (
            [(t, returns[0]) for t in outputs] if len(returns) == 1 else zip(outputs, returns, strict=True)
        )
        created = 0
        for tensor, schema in pairs:
            if not isinstance(tensor, torch.Tensor) or schema.alias_info is not None:
                continue
            ref = StorageWeakRef(tensor.untyped_storage())
            if ref not in self.created:
                self.created[ref] = tensor.untyped_storage().nbytes()
                created += self.created[ref]
        return created


def profile_block(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BlockProfile:
    """Run `block` once on fake copies of its inputs (real ones if it must) and record costs.

    Dispatch modes already active (a FlopCounterMode, a MemTracker) are set aside
    meanwhile: the profile is not part of the step they measure.
    """
    with _disable_current_modes():
        try:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_args, fake_kwargs = tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
            with mode:
                return _record(block, fake_args, fake_kwargs)
        except _NOT_FAKEABLE:
            real_args, real_kwargs = tree_map_only(torch.Tensor, _detached, (args, kwargs))
            return _record(block, real_args, real_kwargs)


def _detached(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(tensor.requires_grad)


def _record(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BlockProfile:
    saved: list[StorageWeakRef] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(StorageWeakRef(tensor.untyped_storage()))
        return tensor

    recorder = _Recorder()
    with recorder, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        block(*args, **kwargs)
    # Only storages the block created count: inputs and parameters are held with or without AC.
    held = set(saved) & recorder.created.keys()
    return BlockProfile(tuple(recorder.ops), sum(recorder.created[ref] for ref in held))


class ProfileCache:
    """Profiles by block signature, so identical blocks of a model are profiled once."""

    def __init__(self) -> None:
        self._profiles: dict[tuple[Any, ...], BlockProfile] = {}
        self.hits = 0
        self.misses = 0

    def get(self, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BlockProfile:
        key = _signature(block, args, kwargs)
        profile = self._profiles.get(key)
        if profile is None:
            self.misses += 1
            profile = self._profiles[key] = profile_block(block, args, kwargs)
        else:
            self.hits += 1
        return profile


def structure(block: nn.Module) -> tuple[Any, ...]:
    """What a block is, apart from its inputs: code, submodules, parameter layouts."""
    return (type(block), repr(block), tuple(_tensor_signature(name, t) for name, t in _named_tensors(block)))


def _signature(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What decides a block's op sequence: its structure, inputs and modes."""
    leaves, spec = tree_flatten((args, kwargs))
    return (
        structure(block),
        block.training,
        tuple(_tensor_signature("", t) if isinstance(t, torch.Tensor) else repr(t) for t in leaves),
        str(spec),
        tuple(torch.is_autocast_enabled(device) for device in ("cpu", "cuda")),
    )


def _named_tensors(block: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from block.named_parameters()
    yield from block.named_buffers()


def _tensor_signature(name: str, tensor: torch.Tensor) -> tuple[Any, ...]:
    return (name, tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device, tensor.requires_grad)
