"""torchtitan's reference figures on its toy block, in every tier."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch

from ac import ACConfig, apply_ac
from ackit.models.toy import DIM, FLOP_UNIT, REFERENCE, ToyModel, toy_input
from ackit.presets import PRESETS
from ackit.units import MIB


def _measure_toy(tier, config: ACConfig, **model_kwargs) -> tuple[float, float]:
    model = apply_ac(ToyModel(**model_kwargs).to(tier.device), config)
    x = toy_input(tier.device)
    flops = tier.flops(lambda: model(x))
    act = tier.activation_bytes(model, lambda: model(x), inputs=x)
    return flops.backward / FLOP_UNIT, act / MIB


@pytest.mark.parametrize("name", list(REFERENCE))
def test_toy_matches_torchtitan_reference(tier, name):
    backward_units, act_mib = _measure_toy(tier, PRESETS[name])
    assert (backward_units, round(act_mib, 3)) == REFERENCE[name]


def test_forward_flops_do_not_depend_on_ac(tier):
    x = toy_input(tier.device)
    forwards = {}
    for name in REFERENCE:
        config = PRESETS[name]
        model = apply_ac(ToyModel().to(tier.device), config)
        forwards[name] = tier.flops(functools.partial(model, x)).forward
    assert set(forwards.values()) == {4 * FLOP_UNIT}, forwards


def test_biased_router_is_still_forced(tier):
    """A Linear with bias dispatches addmm, whose weight operand is args[2]."""
    assert _measure_toy(tier, PRESETS["op"], router_bias=True)[0] == REFERENCE["op"][0]
    # Without forcing, the biased addmm is still counted as the first matmul.
    assert _measure_toy(tier, PRESETS["op-no-force"], router_bias=True)[0] == REFERENCE["op-no-force"][0]


@pytest.mark.parametrize("name", list(REFERENCE))
def test_several_blocks_scale_linearly(tier, name):
    backward_units, act_mib = _measure_toy(tier, PRESETS[name], n_blocks=3)
    want_flops, want_mib = REFERENCE[name]
    assert backward_units == 3 * want_flops
    # Every block reads the same input, so only per-block activations add up.
    assert round(act_mib, 3) == 3 * want_mib


@pytest.mark.parametrize("name", list(REFERENCE))
def test_toy_gradients_match_no_ac(tier, name):
    torch.manual_seed(0)
    reference = ToyModel(n_blocks=2).to(tier.device)
    model = apply_ac(copy.deepcopy(reference), PRESETS[name])
    x = torch.randn(64, DIM, device=tier.device)
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    reference(inputs[0]).backward()
    model(inputs[1]).backward()
    tier.assert_grads_match(reference, model)
    rtol, atol = tier.tolerances()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=rtol, atol=atol)


def test_early_stop_is_passed_on_and_ends_the_recompute_at_the_last_tensor_backward_needs(tier):
    """Full AC recomputes the whole block without early stop; with it (torch.utils.checkpoint's default), the
    block's last matmul, whose output backward never reads, is not run again."""
    stopped = _measure_toy(tier, dataclasses.replace(PRESETS["full"], early_stop=True))[0]
    complete = _measure_toy(tier, dataclasses.replace(PRESETS["full"], early_stop=False))[0]
    assert stopped < complete == REFERENCE["full"][0], (stopped, complete)
