"""Named AC configurations shared by the tests, taken from the report's list of modes."""

from __future__ import annotations

from ac import ACConfig
from harness.sweep import MODES

# Named as torchtitan's toy reference figures name them (tests/models/toy.py).
TOY_CONFIGS = {
    "none": MODES["none"],
    "op": MODES["op-no-force"],
    "op+gate": MODES["op"],
    "op+output": ACConfig(selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=["output"]),
    "full": MODES["full"],
}

MOE_CONFIGS = {
    **{name: MODES[name] for name in ("none", "full", "layer-1", "layer-2", "op", "op-no-force")},
    "memory_budget": MODES["budget-0.5"],
}
