"""AC on the MoE transformer: same gradients, same state_dict, the blocks the
config names, and recompute that grows with the policy, in every tier."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from ac import ACConfig, apply_ac
from ackit.models import moe
from ackit.presets import PRESETS

ARGS = moe.MoEArgs(n_layers=4)
MOE_MODES = ["none", "full", "layer-1", "layer-2", "op", "op-no-force", "budget-0.5"]


def _loss_step(model: nn.Module, device: torch.device, args: moe.MoEArgs = ARGS):
    """A zero-argument step for the tier's measurements."""
    tokens, targets = moe.batch(args, device=device)
    return lambda: moe.loss_fn(model(tokens), targets)


def _train_step(model: nn.Module, device: torch.device, args: moe.MoEArgs = ARGS) -> torch.Tensor:
    tokens, targets = moe.batch(args, device=device)
    loss = moe.loss_fn(model(tokens), targets)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name", MOE_MODES)
def test_gradients_match_no_ac(tier, name):
    reference = moe.build(ARGS, device=tier.device)
    model = apply_ac(moe.build(ARGS, device=tier.device), PRESETS[name])
    ref_loss, loss = _train_step(reference, tier.device), _train_step(model, tier.device)
    rtol, atol = tier.tolerances()
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    tier.assert_grads_match(reference, model)


@pytest.mark.parametrize("name", [*MOE_MODES, "budget-0.1", "budget-0.75"])
def test_dropout_replays_with_preserved_rng_state(tier, name):
    """Dropout in attention (SDPA's dropout_p) and after it, every mode, the default config."""
    args = moe.MoEArgs(n_layers=2, dropout=0.2)
    reference = moe.build(args, device=tier.device)
    model = apply_ac(moe.build(args, device=tier.device), PRESETS[name])
    losses = []
    for m in (reference, model):
        torch.manual_seed(123)
        losses.append(_train_step(m, tier.device, args))
    assert torch.equal(losses[0], losses[1])
    tier.assert_grads_match(reference, model)


def test_dropout_without_preserved_rng_state_diverges(tier):
    """Proves the dropout test above can fail: recompute draws a new mask."""
    args = moe.MoEArgs(n_layers=2, dropout=0.2)
    reference = moe.build(args, device=tier.device)
    model = apply_ac(moe.build(args, device=tier.device), ACConfig(mode="full", preserve_rng_state=False))
    for m in (reference, model):
        torch.manual_seed(123)
        with pytest.warns(UserWarning, match="preserve_rng_state=False") if m is model else nullcontext():
            _train_step(m, tier.device, args)
    with pytest.raises(AssertionError):
        tier.assert_grads_match(reference, model)


def _wrapped_positions(model: nn.Module) -> list[int]:
    return [
        pos
        for pos, (_, block) in enumerate(model.layers.named_children(), start=1)
        if isinstance(block, ActivationWrapper)
    ]


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize(
    ("option", "expected"), [("1", [1, 2, 3, 4, 5]), ("2", [2, 4]), ("3", [3]), ("6", [])]
)
def test_layer_option_wraps_every_nth_block(option, expected):
    model = apply_ac(moe.build(moe.MoEArgs(n_layers=5)), ACConfig(selective_ac_option=option))
    assert _wrapped_positions(model) == expected


@pytest.mark.tiers("cpu")
def test_layer_count_is_per_call():
    """torchtitan once kept the counter in a global: a second model got other blocks."""
    first = apply_ac(moe.build(moe.MoEArgs(n_layers=3)), ACConfig(selective_ac_option="2"))
    second = apply_ac(moe.build(moe.MoEArgs(n_layers=3)), ACConfig(selective_ac_option="2"))
    assert _wrapped_positions(first) == _wrapped_positions(second) == [2]


@pytest.mark.tiers("cpu")
def test_sequential_and_module_list_containers():
    for layers in (
        nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]),
        nn.ModuleList(nn.Linear(4, 4) for _ in range(4)),
    ):
        model = nn.Module()
        model.layers = layers
        apply_ac(model, ACConfig(selective_ac_option="2"))
        assert _wrapped_positions(model) == [2, 4]


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize("name", MOE_MODES)
def test_state_dict_keys_are_unchanged_and_load_both_ways(name):
    plain = moe.build(ARGS, seed=1)
    wrapped = apply_ac(moe.build(ARGS, seed=2), PRESETS[name])
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())
    fresh = moe.build(ARGS, seed=3)
    fresh.load_state_dict(wrapped.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_recompute_grows_from_none_to_full(tier):
    backward = {}
    for name in ("none", "op", "layer-2", "full"):
        model = apply_ac(moe.build(ARGS, device=tier.device), PRESETS[name])
        backward[name] = tier.flops(_loss_step(model, tier.device)).backward
    assert backward["none"] < backward["op"] < backward["full"]
    assert backward["none"] < backward["layer-2"] < backward["full"]
    # full AC recomputes the whole forward of every block, no more.
    forward_blocks = backward["full"] - backward["none"]
    assert backward["layer-2"] - backward["none"] == pytest.approx(forward_blocks / 2)


def test_activation_memory_shrinks_from_none_to_full(tier):
    held = {}
    for name in ("none", "op", "layer-2", "full"):
        model = apply_ac(moe.build(ARGS, device=tier.device), PRESETS[name])
        tokens, _ = moe.batch(ARGS, device=tier.device)
        held[name] = tier.activation_bytes(model, _loss_step(model, tier.device), tokens)
    assert held["full"] < held["layer-2"] < held["none"]
    assert held["full"] < held["op"] < held["none"]
