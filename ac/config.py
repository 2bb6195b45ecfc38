"""The `[activation_checkpoint]` job config, with torchtitan's field names.

Every field is checked when the config is built, so a typo fails before any
model is touched rather than halfway through the first training step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SELECTIVE_KINDS = ("layer", "op")  # the two kinds of mode "selective"
DEFAULT_FORCE_RECOMPUTE_FQNS = ("moe.router.gate",)
DETERMINISM_CHECKS = ("default", "none")
BOOL_FIELDS = ("preserve_rng_state", "early_stop", "debug", "compile")
NAME_FIELDS = ("per_op_sac_save_names", "per_op_sac_recompute_names")


def type_name(value: object) -> str:
    """The type of `value` as an error message should name it: `numpy.bool`, not `bool`."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_memory_budget(budget: object, label: str) -> float:
    """`budget` as a float, or a ValueError that starts with `label` and says what is wrong.

    Any real number is accepted (numpy scalars too); a bool is not a budget.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"{label} is a {type_name(budget)}, not a number in [0.0, 1.0]")
    if math.isnan(budget) or not 0.0 <= budget <= 1.0:
        raise ValueError(f"{label} is outside the allowed range [0.0, 1.0]")
    return float(budget)


def check_names(value: object, label: str, what: str) -> list[str]:
    """`value` as a list of non-empty strings, or a ValueError that starts with `label`.

    Any iterable but a string is read once, before it is checked, so a generator is not
    emptied by the check."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{label}={value!r} must be a list of non-empty {what} strings")
    items = list(value)
    bad = [item for item in items if not isinstance(item, str) or not item]
    if bad:
        raise ValueError(f"{label}={items!r} must be a list of non-empty {what} strings; {bad!r} are not")
    return items


# `ACConfig.kind` values, one per mode class: `ac.modes.REGISTRY` has exactly these keys
# (a test holds them equal). Kept here as data so the config needs no import of the modes.
KINDS = ["none", "full", "layer", "op", "memory_budget"]


def modes() -> list[str]:
    """The values `ACConfig.mode` accepts: every kind, "selective" for layer and op SAC."""
    return [name for name in KINDS if name not in SELECTIVE_KINDS] + ["selective"]


def compile_backends() -> list[str]:
    """The values `ACConfig.compile_backend` accepts: this package's "traced_eager" and
    every backend torch registers."""
    import torch._dynamo

    from ac import traced

    return [traced.NAME, *torch._dynamo.list_backends(exclude_tags=())]


def _check_backend(backend: object) -> None:
    allowed = compile_backends()
    if backend not in allowed:
        raise ValueError(f"ACConfig.compile_backend={backend!r} is not one of {allowed}")


@dataclass
class ACConfig:
    """How `apply_ac` checkpoints the blocks of a model.

    mode: "none", "full" (every block), "selective" (per layer or per op) or
        "memory_budget" (keep activations within `memory_budget` of no-AC's).
    selective_ac_option: "op" for per-op SAC, or a positive integer string "n"
        to fully checkpoint every n-th block.
    per_op_sac_force_recompute_mm_shapes_by_fqns: fqn substrings of
        `nn.Linear`s whose matmuls op-SAC always recomputes (MoE routers by
        default: their output is tiny to recompute but blocks expert dispatch).
    per_op_sac_save_names, per_op_sac_recompute_names: op-output names
        (`<module path in the block>.<op>_<k>`, `*` wildcards; see
        `ac.names`) that op-SAC always saves or always recomputes.
    memory_budget: fraction of no-AC activation memory to keep, in [0, 1].
    compile: compile each block after wrapping it (torchtitan's order), with
        `compile_backend`.
    compile_backend: a torch.compile backend name, or "traced_eager" (`ac.traced`):
        aot_eager's traced graphs with each op called without OpOverload's Python
        wrapper, the recommended way to run op-SAC and memory_budget without inductor
        (eager kernels, gradients bitwise equal to eager no AC's, no per-op dispatch mode).
    preserve_rng_state: replay random ops (dropout) exactly in the recompute;
        without it gradients of blocks that draw random numbers are wrong.
    """

    mode: str = "selective"
    selective_ac_option: str = "2"
    per_op_sac_force_recompute_mm_shapes_by_fqns: list[str] = field(
        default_factory=lambda: list(DEFAULT_FORCE_RECOMPUTE_FQNS)
    )
    per_op_sac_save_names: list[str] = field(default_factory=list)
    per_op_sac_recompute_names: list[str] = field(default_factory=list)
    preserve_rng_state: bool = True
    early_stop: bool = False
    memory_budget: float = 0.5
    determinism_check: str = "default"
    debug: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        for name in BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"ACConfig.{name}={value!r} must be a bool (true or false), not a {type_name(value)}"
                )
        if not isinstance(self.mode, str) or self.mode not in modes():
            raise ValueError(f"ACConfig.mode={self.mode!r} is not one of {modes()}")
        option = self.selective_ac_option
        if isinstance(option, numbers.Integral) and not isinstance(option, bool):
            self.selective_ac_option = str(int(option))
        if self.layer_interval is None and self.selective_ac_option != "op":
            raise ValueError(
                f"ACConfig.selective_ac_option={option!r} is not allowed: "
                'use "op" for per-op SAC or a positive integer string such as "2"'
            )
        self.memory_budget = check_memory_budget(
            self.memory_budget, f"ACConfig.memory_budget={self.memory_budget!r}"
        )
        self.per_op_sac_force_recompute_mm_shapes_by_fqns = check_names(
            self.per_op_sac_force_recompute_mm_shapes_by_fqns,
            "ACConfig.per_op_sac_force_recompute_mm_shapes_by_fqns",
            "fqn",
        )
        for name in NAME_FIELDS:
            setattr(self, name, check_names(getattr(self, name), f"ACConfig.{name}", "op-output name"))
        named = [name for name in NAME_FIELDS if getattr(self, name)]
        if named and (self.kind != "op" or self.compile):
            raise ValueError(
                f"ACConfig.{named[0]} is set, but names are read only by eager per-op SAC "
                f'(mode="selective", selective_ac_option="op", compile=False); this config has '
                f"mode={self.mode!r}, selective_ac_option={self.selective_ac_option!r}, compile={self.compile}"
            )
        both = set(self.per_op_sac_save_names) & set(self.per_op_sac_recompute_names)
        if both:
            raise ValueError(
                f"ACConfig names {sorted(both)} are in both per_op_sac_save_names and "
                "per_op_sac_recompute_names; a name is saved or recomputed, not both"
            )
        if not isinstance(self.determinism_check, str) or self.determinism_check not in DETERMINISM_CHECKS:
            raise ValueError(
                f"ACConfig.determinism_check={self.determinism_check!r} is not one of "
                f"{list(DETERMINISM_CHECKS)}"
            )
        if not isinstance(self.compile_backend, str):
            raise ValueError(
                f"ACConfig.compile_backend={self.compile_backend!r} must be a backend name string"
            )
        self._check_debug()
        if self.compile:
            _check_backend(self.compile_backend)

    def _check_debug(self) -> None:
        """torch refuses `debug=True` at the first forward wherever a SAC policy (a
        `context_fn`) or a compiled graph runs: refused here instead."""
        if not self.debug:
            return
        refused = []
        if self.kind in ("op", "memory_budget"):
            refused.append(f"mode {self.kind!r} (its SAC policy is a context_fn)")
        if self.compile:
            refused.append("compile=True (torch.compile cannot trace the debug mode)")
        if refused:
            raise ValueError(
                f"ACConfig.debug=True is not allowed with {' or '.join(refused)}: torch.utils.checkpoint "
                "refuses it at the first forward; use debug with mode 'full' or layer SAC, uncompiled"
            )

    @property
    def kind(self) -> str:
        """The `ac.modes.REGISTRY` key: the mode, with "selective" split into "layer" and "op"."""
        if self.mode != "selective":
            return self.mode
        return "op" if self.layer_interval is None else "layer"

    @property
    def layer_interval(self) -> int | None:
        """The n of layer SAC, or None when the option is not a positive integer."""
        option = self.selective_ac_option
        if isinstance(option, str) and option.isascii() and option.isdigit() and int(option) > 0:
            return int(option)
        return None

    @property
    def uses_default_force_recompute_fqns(self) -> bool:
        return tuple(self.per_op_sac_force_recompute_mm_shapes_by_fqns) == DEFAULT_FORCE_RECOMPUTE_FQNS

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> ACConfig:
        """Build from the `[activation_checkpoint]` table of a TOML job config."""
        if not isinstance(table, dict):
            raise ValueError(f"[activation_checkpoint] must be a table of keys, not {table!r}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ValueError(f"unknown [activation_checkpoint] keys {unknown}; allowed keys are {allowed}")
        return cls(**table)
