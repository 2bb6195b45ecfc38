"""Named saves: op-SAC saves exactly the op outputs named, and says when a name matches nothing."""

from __future__ import annotations

import warnings

import pytest
import torch

from ac import ACConfig, apply_ac
from ac.names import op_names
from ackit import models
from ackit.models import toy

pytestmark = pytest.mark.tiers("cpu")

LINEARS = ("moe.router.gate", "attention.wq", "output")  # the toy block's Linears, in call order


def test_a_blocks_op_names_are_listed_in_call_order():
    built = models.build("toy")
    names = op_names(built.model.layers["0"], built.block_input())
    assert [n for n in names if n.endswith(".mm_0")] == [f"{linear}.mm_0" for linear in LINEARS]
    assert names[-1] == "sum_0"  # the block's own code: no module path
    assert all(not hook for m in built.model.modules() for hook in (m._forward_hooks, m._forward_pre_hooks))


def test_op_names_count_each_op_per_module():
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = block

        def forward(self, x):
            return self.inner(self.inner(x))

    names = op_names(Twice(), torch.randn(2, 4))
    assert [n for n in names if "addmm" in n] == ["inner.0.addmm_0", "inner.0.addmm_1"]


def _linear(name: str) -> torch.nn.Linear:
    return toy.ToyModel().layers["0"].get_submodule(name)


@pytest.mark.parametrize("saved", [("attention.wq",), ("output",), ()], ids=["wq", "output", "none"])
def test_exactly_the_named_outputs_are_held_and_the_rest_recomputed(tier, saved):
    """Every other matmul is named for recompute: the block holds the named outputs' bytes
    (over what full AC holds: the model's own loss scalar) and backward recomputes the
    other matmuls' flops, nothing else."""
    full = models.build("toy")
    apply_ac(full.model, ACConfig(mode="full"))
    full_bytes = tier.activation_bytes(full.model, full.step, full.inputs)
    none = models.build("toy")
    none_flops = tier.flops(none.step)
    built = models.build("toy")
    config = ACConfig(
        selective_ac_option="op",
        per_op_sac_force_recompute_mm_shapes_by_fqns=[],
        per_op_sac_save_names=[f"{name}.mm_0" for name in saved],
        per_op_sac_recompute_names=["*.mm_*"],
    )
    apply_ac(built.model, config)
    rows = built.inputs[0].shape[0]
    flops = tier.flops(built.step)
    tier.assert_grads_match(none.model, built.model)  # one step each
    held = tier.activation_bytes(built.model, built.step, built.inputs) - full_bytes
    assert held == sum(rows * _linear(name).out_features * 4 for name in saved)
    recomputed = [_linear(name) for name in LINEARS if name not in saved]
    assert flops.backward - none_flops.backward == sum(
        2 * rows * m.in_features * m.out_features for m in recomputed
    )


def test_a_pattern_naming_no_op_warns_once_after_the_first_forward():
    built = models.build("toy", n_blocks=2)
    config = ACConfig(selective_ac_option="op", per_op_sac_save_names=["output.mm_0", "attn.*"])
    apply_ac(built.model, config)
    with pytest.warns(
        UserWarning, match=r"per_op_sac_save_names patterns \['attn.\*'\] match no op output of a ToyBlock"
    ):
        built.step().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built.step().backward()


def test_patterns_that_name_ops_are_silent():
    built = models.build("toy")
    apply_ac(built.model, ACConfig(selective_ac_option="op", per_op_sac_recompute_names=["*.mm_*"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built.step().backward()
