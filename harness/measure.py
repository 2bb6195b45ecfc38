"""Measurements an AC test needs: flops, activation bytes, gradient equality.

All work on any device; CUDA-only statistics live in `cuda_activation_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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
