"""Measurements an AC test needs: flops, activation bytes, gradient equality.

All work on any device; CUDA-only statistics live in `cuda_activation_bytes`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

Step = Callable[[], torch.Tensor]
_WRAPPER_PREFIX = "_checkpoint_wrapped_module."


@dataclass(frozen=True)
class Flops:
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def scalar_loss(out: torch.Tensor) -> torch.Tensor:
    """A step may return logits or a loss; backward needs a scalar."""
    return out if out.dim() == 0 else out.float().sum()


def flops(step: Step) -> Flops:
    """Forward and backward flops of one step, backward including recompute.

    Both passes run under one FlopCounterMode: SAC caches ops by dispatch mode,
    so counting backward alone would fail to find what forward saved.
    """
    with FlopCounterMode(display=False) as counter:
        loss = scalar_loss(step())
        forward = counter.get_total_flops()
        loss.backward()
    return Flops(forward, counter.get_total_flops() - forward)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def activation_bytes(model: nn.Module, step: Step, inputs: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of activations alive after forward, not counting `inputs`.

    MemTracker classifies every tensor created in forward (and its recompute) as
    an activation, on CPU and CUDA alike, so this is the tier-neutral figure.
    """
    return memory(model, step, inputs).activation


@dataclass(frozen=True)
class Memory:
    activation: int  # activation bytes alive after forward, inputs excluded
    peak: int  # MemTracker's peak of everything (parameters and gradients too) during the step


def memory(model: nn.Module, step: Step, inputs: Iterable[torch.Tensor] = ()) -> Memory:
    """Activation bytes after forward and the step's peak bytes, from one MemTracker run."""
    from torch.distributed._tools.mem_tracker import MemTracker  # pulls in torch.distributed: 1.5 s

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss = scalar_loss(step())
        snapshot = tracker.get_tracker_snapshot("current")
        held = sum(per_device.get("Activation", 0) for per_device in snapshot.values())
        loss.backward()
    peak = sum(per_device.get("Total", 0) for per_device in tracker.get_tracker_snapshot("peak").values())
    return Memory(held - _storage_bytes(inputs), peak)


def cuda_activation_bytes(step: Step) -> int:
    """Bytes the CUDA caching allocator handed out during forward and still holds."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["requested_bytes.all.current"]
    loss = scalar_loss(step())
    torch.cuda.synchronize()
    held = torch.cuda.memory_stats()["requested_bytes.all.current"] - before
    loss.backward()
    return held - loss.untyped_storage().nbytes()


def cuda_peak_bytes(step: Step) -> int:
    """Peak bytes allocated above the starting point during one forward+backward."""
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    scalar_loss(step()).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def named_grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients by parameter name, with checkpoint-wrapper prefixes removed."""
    return {name.replace(_WRAPPER_PREFIX, ""): p.grad for name, p in model.named_parameters()}


def assert_grads_match(expected: nn.Module, actual: nn.Module, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Every parameter gradient equal (bitwise when both tolerances are 0)."""
    want, got = named_grads(expected), named_grads(actual)
    if want.keys() != got.keys():
        raise AssertionError(f"parameter names differ: {sorted(want.keys() ^ got.keys())}")
    for name, grad in want.items():
        other = got[name]
        if grad is None or other is None:
            if grad is not other:
                raise AssertionError(f"{name}: one model has a gradient and the other has none")
            continue
        if rtol == 0.0 and atol == 0.0:
            if not torch.equal(grad, other):
                diff = (grad.float() - other.float()).abs().max().item()
                raise AssertionError(f"{name}: gradients are not bitwise equal (max abs diff {diff:.3g})")
        else:
            torch.testing.assert_close(other, grad, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# Flops counted inside compiled graphs, by pass: torch.compile refuses to run
# under a Python dispatch mode, so no FlopCounterMode can sit around a
# compiled step. The counting backend prices each graph once, node by node,
# with FlopCounterMode's formulas, and adds that up every time the graph runs.
_GRAPH_FLOPS: dict[str, int] = {}
COUNTING_BACKEND = "harness_counting"


def _node_flops(node: torch.fx.Node) -> int:
    target, args, kwargs = node.target, node.args, node.kwargs
    if (
        isinstance(target, torch._ops.HigherOrderOperator)
        and args
        and isinstance(args[0], torch._ops.OpOverload)
    ):
        target, args = (
            args[0],
            args[1:],
        )  # run_and_save_rng_state(op, ...), run_with_rng_state(state, op, ...)
    elif isinstance(target, torch._ops.HigherOrderOperator) and len(args) > 1:
        target, args = args[1], args[2:]
    formula = flop_registry.get(getattr(target, "overloadpacket", None))
    if formula is None or "val" not in node.meta:
        return 0
    values = torch.fx.node.map_arg((args, kwargs), lambda arg: arg.meta.get("val"))
    out = node.meta["val"]
    if isinstance(out, tuple) and node.target is not target:
        out = out[-1] if isinstance(out[0], torch.Tensor) and out[0].dim() == 0 else out[0]
    return formula(*values[0], **values[1], out_val=out)


def counting_backend() -> str:
    """The name of a torch.compile backend that is `aot_eager_decomp_partition` (inductor's
    decompositions and partitioner, no code generation) and counts the flops its graphs run."""
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    if COUNTING_BACKEND in torch._dynamo.list_backends(exclude_tags=()):
        return COUNTING_BACKEND

    def counting(phase: str) -> Callable[..., Callable[..., object]]:
        def compile_graph(graph: torch.fx.GraphModule, example_inputs: object) -> Callable[..., object]:
            graph_flops = sum(_node_flops(node) for node in graph.graph.nodes if node.op == "call_function")

            def run(*args: object) -> object:
                _GRAPH_FLOPS[phase] = _GRAPH_FLOPS.get(phase, 0) + graph_flops
                return graph(*args)

            return make_boxed_func(run)

        return compile_graph

    def decompositions() -> object:
        from torch._inductor.compile_fx import select_decomp_table

        return select_decomp_table()

    backend = aot_autograd(
        fw_compiler=counting("forward"),
        bw_compiler=counting("backward"),
        decompositions=decompositions,
        partition_fn=functools.partial(min_cut_rematerialization_partition, compiler="inductor"),
    )
    torch._dynamo.register_backend(backend, name=COUNTING_BACKEND)
    return COUNTING_BACKEND


def compiled_flops(step: Step) -> Flops:
    """Flops of one step inside graphs compiled with `counting_backend()`, backward with recompute."""
    _GRAPH_FLOPS.clear()
    loss = scalar_loss(step())
    forward = _GRAPH_FLOPS.get("forward", 0)
    loss.backward()
    return Flops(forward, _GRAPH_FLOPS.get("backward", 0))


def saved_activation_bytes(step: Step, held_anyway: Iterable[torch.Tensor]) -> int:
    """Bytes autograd saves for backward during one forward, apart from `held_anyway`
    (parameters, inputs). Compiled graphs save exactly their activations this way,
    and unlike MemTracker it needs no dispatch mode, which torch.compile refuses."""
    exclude = {t.untyped_storage().data_ptr() for t in held_anyway}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = scalar_loss(step())
    loss.backward()
    return sum(saved.values())
