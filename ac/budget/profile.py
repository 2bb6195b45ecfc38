"""Profile one block's forward: what each op costs to recompute and to keep.

The block runs once on fake tensors (no real compute, no real memory), so a
profile costs milliseconds. Each dispatched op records its flops (torch's
flop-counter formulas, the same ones `FlopCounterMode` uses) and the bytes of
the storages it creates, and the child module it runs in; autograd's
saved-tensor hooks record what the block would hold without AC and which
children hold it. A timed profile also runs the block once for real and
records each op's wall time, which prices recompute in eager mode. Blocks whose forward depends on data (`nonzero`,
`.item()`) cannot run on fake tensors and are profiled once on real ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
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
    scope: str = ""  # the block's direct child it runs in; "" for the block's own code
    seconds: float = 0.0  # wall time in a timed real forward; 0 when not timed


@dataclass(frozen=True)
class HeldStorage:
    """A storage the block creates and autograd holds without AC: who made it, who holds it."""

    bytes: int
    creator: str  # scope of the op that created it
    savers: frozenset[str]  # scopes whose ops saved it for backward
    feeds: frozenset[str]  # children that take it as an input


@dataclass(frozen=True)
class BlockProfile:
    ops: tuple[OpCost, ...]
    no_ac_bytes: int  # activation bytes autograd holds for this block without AC
    held: tuple[HeldStorage, ...] = ()
    children: tuple[str, ...] = ()  # direct children that ran ops, in call order

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    def held_with_checkpointed(self, children: frozenset[str]) -> int:
        """Bytes held when these children run under plain checkpointing and the rest without AC.

        A checkpointed child keeps its inputs and drops what only its own ops saved.
        """
        return sum(
            s.bytes
            for s in self.held
            if s.feeds & children or not (s.savers <= children and s.creator in children)
        )


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []
        self.created: dict[StorageWeakRef, int] = {}
        self.creator: dict[StorageWeakRef, str] = {}
        self.scope = ""
        self._calls: Counter[torch._ops.OpOverload] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "prim":  # metadata queries fake tensors dispatch (prim.device): no kernel
            return out
        formula = flop_registry.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        cost = OpCost(
            func,
            self._calls[func],
            flops,
            self._new_storage_bytes(func, out),
            draws_random(func, args, kwargs),
            self.scope,
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
                self.creator[ref] = self.scope
                created += self.created[ref]
        return created


def profile_block(
    block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], timed: bool = False
) -> BlockProfile:
    """Run `block` once on fake copies of its inputs (real ones if it must) and record costs.

    `timed`: also run it once for real and record each op's wall time. Dispatch
    modes already active (a FlopCounterMode, a MemTracker) are set aside
    meanwhile: the profile is not part of the step they measure. Buffers (BatchNorm's
    running statistics) end as they were: fake tensor mode still runs in-place updates of
    real buffers by constants (`num_batches_tracked += 1`), and the other runs are real.
    """
    with _disable_current_modes(), _buffers_kept(block):
        try:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_args, fake_kwargs = tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
            with mode:
                profile = _record(block, fake_args, fake_kwargs)
        except _NOT_FAKEABLE:
            real_args, real_kwargs = tree_map_only(torch.Tensor, _detached, (args, kwargs))
            profile = _record(block, real_args, real_kwargs)
        if not timed:
            return profile
        ops = _timed(profile.ops, _op_times(block, args, kwargs))
    return profile if ops is None else dataclasses.replace(profile, ops=ops)


def _timed(ops: tuple[OpCost, ...], run: list[tuple[Any, float]]) -> tuple[OpCost, ...] | None:
    """The profiled ops with the time each took in the real run, matched in order. Ops only
    the real run dispatches (autograd detaching the outputs it saves) are passed over; None
    when a profiled op never ran, as the real run took another path: priced by flops then."""
    times, timed = iter(run), []
    for op in ops:
        seconds = next((took for func, took in times if func == op.op), None)
        if seconds is None:
            return None
        timed.append(dataclasses.replace(op, seconds=seconds))
    return tuple(timed)


class _Timer(TorchDispatchMode):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.times: list[tuple[Any, float]] = []
        self.cuda = device.type == "cuda"

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append((func, time.perf_counter() - start))
        return out


def _op_times(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[Any, float]]:
    """Each op of one real forward with its wall time; RNG streams are left as they were."""
    tensors = (t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor))
    device = next((t.device for t in tensors), torch.device("cpu"))
    real_args, real_kwargs = tree_map_only(torch.Tensor, _detached, (args, kwargs))
    timer = _Timer(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad(), timer:
        block(*real_args, **real_kwargs)
    return timer.times


@contextlib.contextmanager
def _buffers_kept(block: nn.Module) -> Iterator[None]:
    saved = {name: buffer.clone() for name, buffer in block.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in block.named_buffers():
                buffer.copy_(saved[name])


def _detached(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(tensor.requires_grad)


def _record(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BlockProfile:
    recorder = _Recorder()
    savers: dict[StorageWeakRef, set[str]] = {}
    feeds: dict[StorageWeakRef, set[str]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        savers.setdefault(StorageWeakRef(tensor.untyped_storage()), set()).add(recorder.scope)
        return tensor

    def enter(name: str, inputs: tuple[Any, ...]) -> None:
        recorder.scope = name
        for tensor in tree_flatten(inputs)[0]:
            if isinstance(tensor, torch.Tensor):
                feeds.setdefault(StorageWeakRef(tensor.untyped_storage()), set()).add(name)

    handles = []
    for name, child in block.named_children():
        handles.append(child.register_forward_pre_hook(lambda _, inputs, name=name: enter(name, inputs)))
        handles.append(child.register_forward_hook(lambda *_: setattr(recorder, "scope", "")))
    try:
        with recorder, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    # Only storages the block created count: inputs and parameters are held with or without AC.
    held = tuple(
        HeldStorage(
            recorder.created[ref],
            recorder.creator[ref],
            frozenset(savers[ref]),
            frozenset(feeds.get(ref, ())),
        )
        for ref in savers.keys() & recorder.created.keys()
    )
    children = tuple(dict.fromkeys(op.scope for op in recorder.ops if op.scope))
    return BlockProfile(tuple(recorder.ops), sum(s.bytes for s in held), held, children)


class ProfileCache:
    """Profiles by block signature, so identical blocks of a model are profiled once."""

    def __init__(self) -> None:
        self._profiles: dict[tuple[Any, ...], BlockProfile] = {}
        self.hits = 0
        self.misses = 0

    def all(self) -> tuple[BlockProfile, ...]:
        """Every profile made so far, in the order made."""
        return tuple(self._profiles.values())

    def get(
        self, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], timed: bool = False
    ) -> BlockProfile:
        key = (*_signature(block, args, kwargs), timed)
        profile = self._profiles.get(key)
        if profile is None:
            self.misses += 1
            profile = self._profiles[key] = profile_block(block, args, kwargs, timed)
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
