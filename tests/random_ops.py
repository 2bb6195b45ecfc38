"""A random op like fused attention with dropout, for the RNG and budget tests: it draws its
mask from the CPU generator out of place (CPU SDPA refuses dropout; CPU dropout is in place),
carries flops and returns a tensor of its own."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


@torch.library.custom_op("ac_test::noisy_dropout", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def noisy_dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An SDPA-like fused op: it draws its mask from the CPU generator, unlike CPU's in-place dropout."""
    mask = (torch.rand_like(x) >= p).to(x.dtype) / (1 - p)
    return x * mask, mask


@noisy_dropout.register_fake
def _(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


def _noisy_dropout_backward(ctx, grad, _grad_mask):
    return grad * ctx.saved_tensors[0], None


def _save_mask(ctx, inputs, output):
    ctx.save_for_backward(output[1])


noisy_dropout.register_autograd(_noisy_dropout_backward, setup_context=_save_mask)
NOISY = torch.ops.ac_test.noisy_dropout.default


@register_flop_formula(torch.ops.ac_test.noisy_dropout)
def _noisy_flops(x_shape, *args, **kwargs) -> int:
    """Priced like attention, so the budget planner wants to keep it."""
    return 1000 * x_shape[0] * x_shape[1]
