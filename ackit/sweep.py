"""The measurements behind `python -m ackit report`: every AC mode on every reference model.

Per mode: flops (FlopCounterMode), activation and peak bytes (MemTracker),
gradients against no AC's, step time (median of interleaved steps, warm-up
excluded), and on CUDA the allocator's bytes. Compiled rows compile each block
after AC (`ACConfig.compile`); torch.compile refuses dispatch modes, so their
memory is what autograd saves and their gradients are compared with compiled
no AC's within float tolerance. Kept apart from the CLI so `python -m ackit`
stays free of torch until a report is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ac import ACConfig, apply_ac, budget_plans
from ackit import models, timing
from ackit.presets import PRESETS
from harness import measure, tiers

# Budget runs that hold what these modes hold, to compare recompute at equal memory.
MATCHED = ("op", "layer-2")
# Modes measured compiled as well: their rows are named "<mode> compiled".
COMPILED_MODES = ("none", "full", "op", "budget-0.5")
# Compiled graphs may reorder float sums: gradients agree to rounding, not bitwise.
COMPILED_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
WARMUP_STEPS, TIMED_STEPS = 2, 7


@dataclass(frozen=True)
class Row:
    model: str
    mode: str
    forward_flops: int | None  # None: compiled (graphs refuse a FlopCounterMode)
    backward_flops: int | None
    recompute_pct: float | None
    activation_bytes: int  # MemTracker's after forward; compiled: bytes autograd saves
    peak_bytes: int | None
    grads_equal: bool  # eager: bitwise to no AC's; compiled: within COMPILED_TOLERANCE of compiled no AC's
    step_ms: float = 0.0
    compiled: bool = False
    cuda_activation_bytes: int | None = None
    cuda_peak_bytes: int | None = None
    plans: tuple[str, ...] = ()  # memory_budget: the plan chosen per block and input layout


def measure_mode(built: models.Built, config: ACConfig, reference: nn.Module) -> dict[str, object]:
    """Everything but time, for one freshly built model; `reference` holds one no-AC step's gradients.

    Flops come first, so the memory passes run with gradients already allocated,
    as in training: their peak then shows activations, not the first gradients.
    """
    model, step, inputs = built.model, built.step, built.inputs
    apply_ac(model, config)
    flops = measure.flops(step)
    figures: dict[str, object] = {
        "forward_flops": flops.forward,
        "backward_flops": flops.backward,
        "grads_equal": _grads_equal(reference, model),
    }
    memory = measure.memory(model, step, inputs)
    figures.update(activation_bytes=memory.activation, peak_bytes=memory.peak)
    figures.update(_cuda_figures(built))
    figures["plans"] = tuple(chosen.describe() for chosen in budget_plans(model))
    return figures


Grads = dict[str, torch.Tensor | None]


def measure_compiled(
    built: models.Built, config: ACConfig, reference: Grads | None
) -> tuple[dict[str, object], Grads]:
    """A compiled mode: saved bytes and gradients against compiled no AC's (`reference`;
    None: this is it), and its own first step's gradients."""
    model, step, inputs = built.model, built.step, built.inputs
    apply_ac(model, config)
    measure.scalar_loss(step()).backward()
    grads = {name: None if g is None else g.clone() for name, g in measure.named_grads(model).items()}
    figures: dict[str, object] = {
        "forward_flops": None,
        "backward_flops": None,
        "recompute_pct": None,
        "peak_bytes": None,
        "compiled": True,
        "grads_equal": reference is None or _grads_close(reference, grads),
        "activation_bytes": measure.saved_activation_bytes(step, [*model.parameters(), *inputs]),
    }
    figures.update(_cuda_figures(built))
    return figures, grads


def _grads_close(expected: Grads, actual: Grads) -> bool:
    return expected.keys() == actual.keys() and all(
        (want is None and actual[name] is None)
        or (
            want is not None
            and actual[name] is not None
            and torch.allclose(actual[name], want, **COMPILED_TOLERANCE)
        )
        for name, want in expected.items()
    )


def _cuda_figures(built: models.Built) -> dict[str, object]:
    if next(built.model.parameters()).device.type != "cuda":
        return {}
    return {
        "cuda_activation_bytes": measure.cuda_activation_bytes(built.step),
        "cuda_peak_bytes": measure.cuda_peak_bytes(built.step),
    }


def reference_model(name: str, device: torch.device) -> nn.Module:
    """The model without AC after one step: the gradients every mode must reproduce.

    The step runs under the same FlopCounterMode as every mode's: under a Python
    dispatch mode embedding backward takes another path, 1e-9 off a plain step.
    """
    built = models.build(name, device)
    measure.flops(built.step)
    return built.model


def _grads_equal(expected: nn.Module, actual: nn.Module) -> bool:
    try:
        measure.assert_grads_match(expected, actual)
    except AssertionError:
        return False
    return True


def run(
    names: list[str],
    device: torch.device,
    progress: Callable[[str], None],
    compile_backend: str | None = None,
) -> dict[str, list[Row]]:
    """Every mode on every model, "none" first, then compiled rows when `compile_backend` is given."""
    # CUDA kernels with atomics (embedding and index_add backward) differ run to run:
    # deterministic algorithms make no AC and every mode comparable bitwise, as on CPU.
    with tiers.deterministic_algorithms() if device.type == "cuda" else contextlib.nullcontext():
        return {name: _model_rows(name, device, progress, compile_backend) for name in names}


def _model_rows(
    name: str, device: torch.device, progress: Callable[[str], None], compile_backend: str | None
) -> list[Row]:
    started = time.perf_counter()
    reference = reference_model(name, device)
    figures: dict[str, dict[str, object]] = {}
    steps: dict[str, measure.Step] = {}
    for mode, config in [*PRESETS.items(), *((f"budget@{m}", m) for m in MATCHED)]:
        if isinstance(config, str):  # matched: known once the mode it matches is measured
            config = ACConfig(mode="memory_budget", memory_budget=matched_budget(figures, config))
        built = models.build(name, device)
        figures[mode] = measure_mode(built, config, reference)
        steps[mode] = built.step
        progress(f"{name:<10} {mode:<20} {time.perf_counter() - started:6.1f}s")
    compiled_reference = None  # compiled no AC, once measured
    for mode in COMPILED_MODES if compile_backend else ():
        config = dataclasses.replace(PRESETS[mode], compile=True, compile_backend=compile_backend)
        built = models.build(name, device)
        label = f"{mode} compiled"
        figures[label], grads = measure_compiled(built, config, compiled_reference)
        compiled_reference = compiled_reference or grads
        steps[label] = built.step
        progress(f"{name:<10} {label:<20} {time.perf_counter() - started:6.1f}s")
    times = timing.step_times_ms(steps, device, WARMUP_STEPS, TIMED_STEPS)
    progress(f"{name:<10} {'step times':<20} {time.perf_counter() - started:6.1f}s")
    return [make_row(name, mode, figures[mode], figures["none"], times[mode]) for mode in figures]


def make_row(
    name: str, mode: str, figures: dict[str, object], none: dict[str, object], step_ms: float
) -> Row:
    fields = dict(figures)
    if fields.get("backward_flops") is not None:
        overhead = fields["backward_flops"] - none["backward_flops"]
        fields["recompute_pct"] = round(
            100.0 * overhead / (none["forward_flops"] + none["backward_flops"]), 2
        )
    return Row(model=name, mode=mode, step_ms=round(step_ms, 3), **fields)


def matched_budget(figures: dict[str, dict[str, object]], mode: str) -> float:
    """The memory budget that holds what `mode` held: its share of no AC's over full AC's."""
    act = {m: f["activation_bytes"] for m, f in figures.items()}
    return min(1.0, (act[mode] - act["full"]) / (act["none"] - act["full"]))


def device_for(choice: str) -> torch.device:
    """The device `--device` names; `auto` is CUDA where there is one."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA device; use --device cpu or auto")
    return torch.device(choice)


def as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
