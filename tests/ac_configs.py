"""Named AC configurations shared by the tests (one place, many test bodies)."""

from __future__ import annotations

from ac import ACConfig

TOY_CONFIGS = {
    "none": ACConfig(mode="none"),
    "op": ACConfig(
        mode="selective", selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=[]
    ),
    "op+gate": ACConfig(mode="selective", selective_ac_option="op"),
    "op+output": ACConfig(
        mode="selective", selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=["output"]
    ),
    "full": ACConfig(mode="full"),
}

MOE_CONFIGS = {
    "none": ACConfig(mode="none"),
    "full": ACConfig(mode="full"),
    "layer-1": ACConfig(mode="selective", selective_ac_option="1"),
    "layer-2": ACConfig(mode="selective", selective_ac_option="2"),
    "op": ACConfig(mode="selective", selective_ac_option="op"),
    "op-no-force": ACConfig(
        mode="selective", selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=[]
    ),
    "memory_budget": ACConfig(mode="memory_budget", memory_budget=0.5),
}
