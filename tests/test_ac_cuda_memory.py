"""CUDA's own allocator statistics agree with the tier-neutral MemTracker figures."""

from __future__ import annotations

import functools

import pytest

from ac import apply_ac
from ackit.models import moe
from ackit.models.toy import REFERENCE, ToyModel, toy_input
from ackit.presets import PRESETS
from ackit.units import MIB

pytestmark = pytest.mark.tiers("gpu")
# MemTracker counts tensor storages; the caching allocator's requested bytes
# add rounding and small autograd buffers. They must agree this closely.
AGREEMENT_RTOL = 0.02
AGREEMENT_ATOL = 64 * 1024


def _loss(model, tokens, targets):
    return moe.loss_fn(model(tokens), targets)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_cuda_statistics_match_torchtitan_reference(tier, name):
    model = apply_ac(ToyModel().to(tier.device), PRESETS[name])
    x = toy_input(tier.device)
    model(x).backward()  # warm-up: allocate gradients before measuring
    assert round(tier.cuda_activation_bytes(lambda: model(x)) / MIB, 3) == REFERENCE[name][1]


@pytest.mark.parametrize("name", ["none", "op", "full"])
def test_memtracker_agrees_with_cuda_statistics(tier, name):
    args = moe.MoEArgs(n_layers=2)
    model = apply_ac(moe.build(args, device=tier.device), PRESETS[name])
    tokens, targets = moe.batch(args, device=tier.device)

    step = functools.partial(_loss, model, tokens, targets)

    step().backward()
    tracked = tier.activation_bytes(model, step, tokens)
    allocated = tier.cuda_activation_bytes(step)
    assert abs(tracked - allocated) <= AGREEMENT_ATOL + AGREEMENT_RTOL * allocated, (tracked, allocated)


def test_peak_memory_falls_with_full_ac(tier):
    args = moe.MoEArgs(n_layers=4, seq_len=128, batch_size=4)
    peaks = {}
    for name in ("none", "full"):
        model = apply_ac(moe.build(args, device=tier.device), PRESETS[name])
        tokens, targets = moe.batch(args, device=tier.device)
        model(tokens).sum().backward()
        peaks[name] = tier.cuda_peak_bytes(functools.partial(_loss, model, tokens, targets))
    assert peaks["full"] < peaks["none"]
