"""`BudgetCheckpoint`: the checkpoint function of `memory_budget` mode.

On a block's first call with an input signature it profiles the block on fake
tensors (cached by block signature), prices it on the running device
(`ac.budget.costs`, measured once per process) and picks the fastest plan
within the budget (`ac.budget.solver`): no AC, plain checkpointing of the block
or of some of its children, or selective checkpointing that saves chosen ops,
named by (op, index within the forward). Later calls find the plan by the
block and its input shapes in one dictionary lookup.

Compiled, a plan runs as a region that compile honours (a SAC region tags the
graph): the plan is made eagerly, outside any traced graph, because profiling
needs real dispatch. torch's `activation_memory_budget` partitioner is not
used: it recomputes random ops with fresh random numbers (pytorch issue 190758).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    SelectiveCheckpointContext,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from ac.budget import costs
from ac.budget.profile import ProfileCache, structure
from ac.budget.solver import FULL, MODULES, NONE, SAC, OpKey, Plan, check_budget, solve
from ac.traced import backend_for


def make_budget_policy(saved: frozenset[OpKey]) -> Callable[..., CheckpointPolicy]:
    """A fresh policy for one checkpointed forward: save exactly the ops in `saved`."""
    calls: Counter[tuple[bool, Any]] = Counter()

    def policy(ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        # Older torch also calls the policy while recomputing: count apart.
        key = (ctx.is_recompute, func)
        index = calls[key]
        calls[key] = index + 1
        return CheckpointPolicy.MUST_SAVE if (func, index) in saved else CheckpointPolicy.MUST_RECOMPUTE

    return policy


def _budget_contexts(saved: frozenset[OpKey]) -> Any:
    return create_selective_checkpoint_contexts(make_budget_policy(saved))


def _call_key(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a call of this block plan differently: the block, its mode, input layouts.

    Computed on every call, so it walks the inputs by hand: pytree's flatten costs 70 us.
    """
    return (id(block), block.training, torch.is_autocast_enabled(), _layout(args), _layout(kwargs))


def _describe_layout(key: tuple[Any, ...]) -> str:
    _, training, autocast, args, kwargs = key
    return f"training={training} autocast={autocast} args={_shown(args)} kwargs={_shown(kwargs)}"


def _shown(layout: Any) -> str:
    """A `_layout` in words: a tensor as `512x512 float32 cpu grad`, containers as Python writes them."""
    if isinstance(layout, tuple) and layout and layout[0] is dict:
        return "{" + ", ".join(f"{key!r}: {_shown(item)}" for key, item in layout[1:]) + "}"
    if isinstance(layout, tuple) and layout and layout[0] in (tuple, list):
        items = ", ".join(map(_shown, layout[1:]))
        return f"({items})" if layout[0] is tuple else f"[{items}]"
    if isinstance(layout, tuple) and len(layout) == 4 and isinstance(layout[1], torch.dtype):
        shape, dtype, device, grad = layout
        dims = "x".join(map(str, shape)) or "scalar"
        return f"{dims} {str(dtype).removeprefix('torch.')} {device}" + (" grad" if grad else "")
    return repr(layout)


def _layout(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value), *map(_layout, value))
    if isinstance(value, dict):
        return (dict, *((key, _layout(item)) for key, item in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


@dataclass(frozen=True)
class ChosenPlan:
    """What the budget chose for one block called with one input layout (read-only)."""

    block: str  # the block's name in the model (its type when it was not named)
    layout: str  # the input layout the plan is for: shapes, dtypes, devices, modes
    plan: Plan

    @property
    def kind(self) -> str:
        return self.plan.kind

    @property
    def saved_ops(self) -> tuple[str, ...]:
        """The ops a SAC plan saves, as `<op>#<index within the block's forward>`, in op order."""
        return tuple(
            f"{op}#{index}" for op, index in sorted(self.plan.saved, key=lambda k: (str(k[0]), k[1]))
        )

    @property
    def held_bytes(self) -> int:
        return self.plan.bytes

    @property
    def seconds(self) -> float:
        """The priced step time over no AC's."""
        return self.plan.seconds

    def describe(self) -> str:
        """One line for a report."""
        what = {MODULES: f" of {sorted(self.plan.children)}", SAC: f" saving {list(self.saved_ops)}"}
        return (
            f"{self.block}: {self.kind}{what.get(self.kind, '')}, holds {self.held_bytes} B, "
            f"recomputes {self.plan.recompute_flops} flops, priced {1e3 * self.seconds:.3f} ms"
        )


class BudgetCheckpoint:
    """A `checkpoint_fn` for `checkpoint_wrapper`; one instance serves all blocks of a model.

    `blocks` are the model's blocks (or a mapping from their names): those of one
    structure share one budget and may take different plans (the k-th of n gets the k-th of `solve`'s n plans).
    Blocks of one structure are assumed to get inputs of one shape; where they
    do not, the first k of them still keep within k blocks' budget.
    `compile_backend`: compile each planned region with this torch.compile backend.
    `device_costs`: price plans with these instead of measuring the device.
    """

    def __init__(
        self,
        budget: float,
        blocks: Iterable[nn.Module] | Mapping[str, nn.Module] = (),
        compile_backend: str | None = None,
        device_costs: costs.DeviceCosts | None = None,
    ) -> None:
        self.budget = check_budget(budget)
        self.compile_backend = compile_backend
        self.device_costs = device_costs
        named = blocks.items() if isinstance(blocks, Mapping) else ((str(k), b) for k, b in enumerate(blocks))
        # Keyed by the modules themselves (by identity), so a deep copy or an unpickled model
        # maps them to its own blocks; the caches below are dropped on pickling and rebuilt.
        self._names: dict[nn.Module, str] = dict((b, name) for name, b in named)
        groups: dict[tuple[Any, ...], list[nn.Module]] = {}
        for block in self._names:
            groups.setdefault(structure(block), []).append(block)
        self._places = {b: (k, len(group)) for group in groups.values() for k, b in enumerate(group)}
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._plan_outside_graph = _outside_graph()  # a local function: never pickled
        self.profiles = ProfileCache()
        self._solved: dict[tuple[int, int, bool], tuple[Plan, ...]] = {}
        self._by_call: dict[tuple[Any, ...], tuple[nn.Module, Plan]] = {}
        self._regions: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Plans, profiles and compiled regions belong to this process's blocks and device:
        a copy (torch.save, copy.deepcopy) plans again on its first step."""
        return {
            k: v
            for k, v in self.__dict__.items()
            if k in ("budget", "compile_backend", "device_costs", "_names", "_places")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def chosen(self) -> list[ChosenPlan]:
        """The plan chosen so far for each block and input layout, in the order they were made."""
        return [
            ChosenPlan(self._names.get(block, type(block).__name__), _describe_layout(key), plan)
            for key, (block, plan) in self._by_call.items()
        ]

    def plan(self, block: nn.Module, /, *args: Any, compiled: bool = False, **kwargs: Any) -> Plan:
        """The plan for `block` called with these inputs; `compiled`: it runs in a traced graph."""
        key = _call_key(block, args, kwargs)
        found = self._by_call.get(key)
        if found is None:
            found = self._by_call[key] = (block, self._solve(block, args, kwargs, compiled))
        return found[1]

    def _solve(self, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], compiled: bool) -> Plan:
        eager = self.compile_backend is None and not compiled
        # Traced eager (traced_eager, aot_eager): eager kernels at their timed cost, but a traced region
        # pays no dispatch mode and no wrapper; inductor (or an unknown backend): flops.
        eager_kernels = eager or self.compile_backend in costs.EAGER_KERNEL_BACKENDS
        profile = self.profiles.get(block, args, kwargs, timed=eager_kernels)
        place, copies = self._places.get(block, (0, 1))
        solved = self._solved.get((id(profile), copies, eager))
        if solved is None:
            solved = solve(
                profile, self.budget, copies, self.pricing(block, args, compiled), module_plans=eager
            )
            self._solved[id(profile), copies, eager] = solved
        return solved[place]

    def pricing(
        self, block: nn.Module, args: tuple[Any, ...] = (), compiled: bool = False
    ) -> costs.DeviceCosts:
        """The device costs plans of `block` are priced with: pinned ones, else measured for
        eager regions, measured without dispatch and region costs for traced eager
        regions, and flops alone for other compiled regions."""
        if self.device_costs is not None:
            return self.device_costs
        if self.compile_backend is None and not compiled:
            return costs.measure(_device(block, args))
        if self.compile_backend in costs.EAGER_KERNEL_BACKENDS:
            return costs.traced_eager(costs.measure(_device(block, args)))
        return costs.COMPILED

    def __call__(self, block: nn.Module, /, *args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in _CHECKPOINT_OPTIONS if name in kwargs}
        if not torch.is_grad_enabled():
            return block(*args, **kwargs)
        plan = self._plan_outside_graph(self, block, args, kwargs, torch.compiler.is_compiling())
        if self.compile_backend is None or plan.kind == NONE:
            return run_plan(plan, options, block, *args, **kwargs)
        return self._region(plan, options)(block, *args, **kwargs)

    def _region(self, plan: Plan, options: dict[str, Any]) -> Callable[..., Any]:
        """The plan's region compiled once; blocks of one structure share its graph."""
        key = (plan, tuple(sorted(options.items())))
        region = self._regions.get(key)
        if region is None:
            run = functools.partial(run_plan, plan, options)
            backend = backend_for(self.compile_backend)
            region = self._regions[key] = torch.compile(run, backend=backend, fullgraph=True)
        return region


_CHECKPOINT_OPTIONS = ("preserve_rng_state", "early_stop", "determinism_check", "debug")


def run_plan(plan: Plan, options: dict[str, Any], block: nn.Module, /, *args: Any, **kwargs: Any) -> Any:
    """One checkpointed call of `block` as `plan` says; `options` go to `torch.utils.checkpoint`."""
    if plan.kind == NONE:
        return block(*args, **kwargs)
    checkpoint_fn = functools.partial(checkpoint, use_reentrant=False, **options)
    if plan.kind == FULL:
        return checkpoint_fn(block, *args, **kwargs)
    if plan.kind == MODULES:
        with _checkpointed_children(block, plan.children, checkpoint_fn):
            return block(*args, **kwargs)
    contexts = functools.partial(_budget_contexts, plan.saved)
    return checkpoint_fn(block, *args, context_fn=contexts, **kwargs)


@contextlib.contextmanager
def _checkpointed_children(block: nn.Module, names: frozenset[str], checkpoint_fn: Any) -> Iterator[None]:
    """For one forward, these children of `block` run under plain checkpointing.

    Only their `forward` is redirected, so parameter names and hooks stay as they are.
    """
    children = [getattr(block, name) for name in names]
    for child in children:
        child.forward = functools.partial(checkpoint_fn, type(child).forward.__get__(child))
    try:
        yield
    finally:
        for child in children:
            del child.forward


def _device(block: nn.Module, args: tuple[Any, ...]) -> torch.device:
    for value in (*args, *block.parameters()):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _plan_eagerly(
    checkpoint_fn: BudgetCheckpoint,
    block: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    compiled: bool,
) -> Plan:
    return checkpoint_fn.plan(block, *args, compiled=compiled, **kwargs)


@functools.cache
def _outside_graph() -> Callable[..., Plan]:
    """`_plan_eagerly` behind a graph break: under torch.compile the plan is made eagerly,
    then tracing resumes. Made on first use, as torch.compiler.disable imports torch._dynamo
    (over a second on CPU), which importing `ac` and the other modes never need."""
    return torch.compiler.disable(
        _plan_eagerly,
        reason="memory_budget plans a block eagerly, on fake tensors; under fullgraph=True "
        "use ACConfig(compile=True), which compiles the planned region instead",
    )
