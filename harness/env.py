"""`TierEnv`: what a test body gets from the `tier` fixture.

It carries plain data only (names, device ids, tolerances) so it pickles into
rank processes, and derives the torch device from the process it is in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from harness import devices, measure

# Tolerances (rtol, atol) for comparing gradients between an AC model and its
# reference on CUDA when kernels may differ run to run; CPU float32 and a
# deterministic tier's float32 are compared bitwise. Values follow
# torch.testing.assert_close's defaults.
CUDA_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1.3e-6, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


@dataclass(frozen=True)
class TierEnv:
    name: str
    device_type: str
    backend: str
    gpu_ids: tuple[str, ...] = field(default=())
    deterministic: bool = False  # the tier runs under torch.use_deterministic_algorithms(True)

    @property
    def device(self) -> torch.device:
        """This process's device: a rank uses the lease entry at its LOCAL_RANK."""
        if self.device_type == "cpu":
            return torch.device("cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", devices.cuda_index(self.gpu_ids[local_rank]))

    @property
    def is_cuda(self) -> bool:
        return self.device_type == "cuda"

    def tolerances(self, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
        if (self.deterministic or not self.is_cuda) and dtype in (torch.float32, torch.float64):
            return (0.0, 0.0)
        return CUDA_TOLERANCES.get(dtype, CUDA_TOLERANCES[torch.bfloat16])

    def flops(self, step: measure.Step) -> measure.Flops:
        return measure.flops(step)

    def activation_bytes(self, model: nn.Module, step: measure.Step, inputs: Any = ()) -> int:
        return measure.activation_bytes(model, step, _tensors(inputs))

    def cuda_activation_bytes(self, step: measure.Step) -> int:
        __tracebackhide__ = True
        self.require_cuda("cuda_activation_bytes")
        return measure.cuda_activation_bytes(step)

    def cuda_peak_bytes(self, step: measure.Step) -> int:
        __tracebackhide__ = True
        self.require_cuda("cuda_peak_bytes")
        return measure.cuda_peak_bytes(step)

    def assert_grads_match(
        self, expected: nn.Module, actual: nn.Module, dtype: torch.dtype = torch.float32
    ) -> None:
        rtol, atol = self.tolerances(dtype)
        measure.assert_grads_match(expected, actual, rtol=rtol, atol=atol)

    def require_cuda(self, what: str) -> None:
        """The one rule for tests that need real CUDA: skip under fake GPUs, refuse in the cpu tier.

        The `cuda_*` measures call it; a test that needs CUDA some other way (a CUDA
        report, a CUDA-only kernel) calls it first, naming what needs CUDA.
        """
        __tracebackhide__ = True  # a skip names the test's line
        if self.is_cuda:
            return
        if self.gpu_ids and devices.fake_gpu_count():
            pytest.skip(f"{what} needs real CUDA; {devices.FAKE_GPUS_ENV} runs tier {self.name!r} on CPU")
        raise RuntimeError(f"{what} needs a CUDA tier; this is tier {self.name!r} on {self.device_type}")


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return [t for t in inputs if isinstance(t, torch.Tensor)]
