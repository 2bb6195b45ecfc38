"""A wrapped model is an ordinary module: it pickles (torch.save, copy.deepcopy) and trains after."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from ac import ACConfig, apply_ac, budget_plans
from ackit import models
from ackit.presets import PRESETS
from harness import measure

pytestmark = pytest.mark.tiers("cpu")

MODES = {
    **{name: PRESETS[name] for name in ("none", "full", "layer-2", "op", "budget-0.5")},
    "budget-0.5-no-rng": ACConfig(mode="memory_budget", preserve_rng_state=False),
    "op-named": ACConfig(selective_ac_option="op", per_op_sac_save_names=["output.*"]),
    # The budget wrapper compiles its regions itself (the blocks stay modules): a copy compiles its own.
    "budget-0.5-traced": ACConfig(mode="memory_budget", compile=True, compile_backend="traced_eager"),
}
COMPILED = {"budget-0.5-traced"}


def _saved_and_loaded(model: torch.nn.Module) -> torch.nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["torch.save", "deepcopy"])
@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=[pytest.mark.compiled] if m in COMPILED else []) for m in MODES]
)
def test_a_wrapped_model_pickles_and_steps_as_before(mode, how):
    built = models.build("toy", n_blocks=2)
    x = built.inputs[0]
    apply_ac(built.model, MODES[mode])
    built.step().backward()  # plans (memory_budget), caches and compiled state exist now
    copied = _saved_and_loaded(built.model) if how == "torch.save" else copy.deepcopy(built.model)
    copied.zero_grad()
    built.model.zero_grad()
    built.model(x).backward()
    copied(x).backward()
    measure.assert_grads_match(built.model, copied)
    # The copy plans again (its timings are its own) for each of its blocks.
    assert len(budget_plans(copied)) == len(budget_plans(built.model))
