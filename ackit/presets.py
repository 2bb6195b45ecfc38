"""AC configurations by name (presets): one vocabulary for the tests, the report and the benchmarks.

"op" is op-SAC as configured by default (the MoE router's matmuls forced to
recompute); "op-no-force" forces nothing; "op-force-output" forces the
toy's output projection. `ackit.models.toy.REFERENCE` uses these names.
"""

from __future__ import annotations

from ac import ACConfig

BUDGETS = (0.1, 0.25, 0.5, 0.75)

PRESETS: dict[str, ACConfig] = {
    "none": ACConfig(mode="none"),
    "full": ACConfig(mode="full"),
    "layer-1": ACConfig(selective_ac_option="1"),
    "layer-2": ACConfig(selective_ac_option="2"),
    "op": ACConfig(selective_ac_option="op"),
    "op-no-force": ACConfig(selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=[]),
    "op-force-output": ACConfig(
        selective_ac_option="op", per_op_sac_force_recompute_mm_shapes_by_fqns=["output"]
    ),
    **{f"budget-{b}": ACConfig(mode="memory_budget", memory_budget=b) for b in BUDGETS},
}
