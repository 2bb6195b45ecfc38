"""torchtitan's activation-checkpointing unit-test toy, rebuilt.

One block: gate (512x512) -> wq (512x512) -> output (512x1024), no bias, and
the loss is the sum of the output. Its flop and memory figures per AC mode are
the project's reference numbers (see `REFERENCE`).
"""

from __future__ import annotations

import torch
from torch import nn

DIM = 512


class ToyBlock(nn.Module):
    def __init__(self, router_bias: bool = False) -> None:
        super().__init__()
        self.moe = nn.Module()
        self.moe.router = nn.Module()
        self.moe.router.gate = nn.Linear(DIM, DIM, bias=router_bias)
        self.attention = nn.Module()
        self.attention.wq = nn.Linear(DIM, DIM, bias=False)
        self.output = nn.Linear(DIM, 2 * DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention.wq(self.moe.router.gate(x))).sum()


class ToyModel(nn.Module):
    def __init__(self, n_blocks: int = 1, router_bias: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(i): ToyBlock(router_bias) for i in range(n_blocks)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = x.new_zeros(())
        for block in self.layers.values():
            loss = loss + block(x)
        return loss


def toy_input(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.randn(DIM, DIM, device=device, requires_grad=True)


# Backward flops in units of 2*512^3 (one 512^3 matmul) and activation MiB held
# after forward, for one block, by `ackit.presets` name: "op-no-force" forces
# nothing; "op" is the default (router forced, and wq shares its shape);
# "op-force-output" forces the output.
FLOP_UNIT = 2 * DIM**3
REFERENCE = {
    "none": (8, 2),
    "op-no-force": (9, 3),
    "op": (10, 2),
    "op-force-output": (11, 1),
    "full": (12, 0),
}
