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
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from ac import ACConfig, apply_ac, budget_plans, traced
from ackit import models, timing
from ackit.presets import PRESETS
from harness import measure, tiers

# Budget runs that hold what these modes hold, to compare recompute at equal memory.
MATCHED = ("op", "layer-2")
# Modes measured compiled as well: their rows are named "<mode> compiled".
COMPILED_MODES = ("none", "full", "op", "budget-0.5")
# Modes measured on the traced-eager path (each block compiled with ac.traced's backend:
# aot_eager's graphs of eager kernels, each op called directly, no per-op dispatch mode):
# rows "<mode> traced", gradients bitwise to eager no AC's.
TRACED_MODES = ("none", "full", "op", "budget-0.5")
TRACED_BACKEND = traced.NAME
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
    step_ms: float = 0.0  # median of interleaved steps
    compiled: bool = False
    cuda_activation_bytes: int | None = None
    cuda_peak_bytes: int | None = None
    plans: tuple[str, ...] = ()  # memory_budget: the plan chosen per block and input layout
    step_q1_ms: float | None = None  # quartiles of the interleaved steps (None: one step, no spread)
    step_q3_ms: float | None = None
    same_plan_as: str | None = None  # runs the plan of this earlier row: timed once, with it
    traced: bool = False  # compiled with TRACED_BACKEND: eager kernels from a traced graph

    @property
    def step(self) -> timing.StepTime:
        q1 = self.step_ms if self.step_q1_ms is None else self.step_q1_ms
        q3 = self.step_ms if self.step_q3_ms is None else self.step_q3_ms
        return timing.StepTime(self.step_ms, q1, q3)


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
    model, step = built.model, built.step
    apply_ac(model, config)
    measure.scalar_loss(step()).backward()
    grads = {name: None if g is None else g.clone() for name, g in measure.named_grads(model).items()}
    return _graph_figures(built, grads_equal=reference is None or _grads_close(reference, grads)), grads


def measure_traced(built: models.Built, config: ACConfig, plain_reference: nn.Module) -> dict[str, object]:
    """A traced-eager mode: saved bytes, and gradients bitwise against a plain eager no-AC step."""
    model, step = built.model, built.step
    apply_ac(model, dataclasses.replace(config, compile=True, compile_backend=TRACED_BACKEND))
    measure.scalar_loss(step()).backward()
    return {
        **_graph_figures(built, grads_equal=_grads_equal(plain_reference, model)),
        "traced": True,
        "plans": tuple(chosen.describe() for chosen in budget_plans(model)),
    }


def _graph_figures(built: models.Built, grads_equal: bool) -> dict[str, object]:
    """A row whose blocks run as graphs: they refuse FlopCounterMode and MemTracker, so no
    flops or peak; its memory is what autograd saves."""
    return {
        "forward_flops": None,
        "backward_flops": None,
        "recompute_pct": None,
        "peak_bytes": None,
        "compiled": True,
        "grads_equal": grads_equal,
        "activation_bytes": measure.saved_activation_bytes(
            built.step, [*built.model.parameters(), *built.inputs]
        ),
        **_cuda_figures(built),
    }


def plan_signature(model: nn.Module, blocks: str = "layers") -> tuple[object, ...]:
    """What each block runs, so rows that run the same plan are timed once: a block left
    alone and a budget's no-AC plan are one plan, plain checkpointing and a budget's full
    plan another; op-SAC is told apart by its forced shapes."""
    chosen = {c.block: c.plan for c in budget_plans(model)}
    signature: list[object] = []
    for name, block in model.get_submodule(blocks).named_children():
        plan = chosen.get(f"{blocks}.{name}")
        if plan is not None:
            signature.append(
                plan.kind if plan.kind in ("none", "full") else (plan.kind, plan.saved, plan.children)
            )
        elif not isinstance(block, ActivationWrapper):
            signature.append("none")
        else:
            context_fn = block.checkpoint_fn.keywords.get("context_fn")
            signature.append(
                "full" if context_fn is None else ("op", getattr(context_fn, "args", context_fn))
            )
    return tuple(signature)


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
    traced: bool = False,
) -> dict[str, list[Row]]:
    """Every mode on every model, "none" first, then traced-eager rows when `traced`, then
    compiled rows when `compile_backend` is given."""
    # CUDA kernels with atomics (embedding and index_add backward) differ run to run:
    # deterministic algorithms make no AC and every mode comparable bitwise, as on CPU.
    with tiers.deterministic_algorithms() if device.type == "cuda" else contextlib.nullcontext():
        return {name: _model_rows(name, device, progress, compile_backend, traced) for name in names}


def _model_rows(
    name: str,
    device: torch.device,
    progress: Callable[[str], None],
    compile_backend: str | None,
    traced: bool,
) -> list[Row]:
    started = time.perf_counter()
    reference = reference_model(name, device)
    figures: dict[str, dict[str, object]] = {}
    steps: dict[str, measure.Step] = {}
    signatures: dict[str, tuple[object, ...]] = {}
    for mode, config in [*PRESETS.items(), *((f"budget@{m}", m) for m in MATCHED)]:
        if isinstance(config, str):  # matched: known once the mode it matches is measured
            config = ACConfig(mode="memory_budget", memory_budget=matched_budget(figures, config))
        built = models.build(name, device)
        figures[mode] = measure_mode(built, config, reference)
        steps[mode] = built.step
        signatures[mode] = ("eager", *plan_signature(built.model))
        progress(f"{name:<10} {mode:<20} {time.perf_counter() - started:6.1f}s")
    if traced:
        plain = models.build(name, device)
        measure.scalar_loss(plain.step()).backward()
    for mode in TRACED_MODES if traced else ():
        built = models.build(name, device)
        label = f"{mode} traced"
        figures[label] = measure_traced(built, PRESETS[mode], plain.model)
        steps[label] = built.step
        signatures[label] = ("traced", *plan_signature(built.model))
        progress(f"{name:<10} {label:<20} {time.perf_counter() - started:6.1f}s")
    compiled_reference = None  # compiled no AC, once measured
    for mode in COMPILED_MODES if compile_backend else ():
        config = dataclasses.replace(PRESETS[mode], compile=True, compile_backend=compile_backend)
        built = models.build(name, device)
        label = f"{mode} compiled"
        figures[label], grads = measure_compiled(built, config, compiled_reference)
        compiled_reference = compiled_reference or grads
        steps[label] = built.step
        signatures[label] = (compile_backend, label)  # compiled regions: each row its own
        progress(f"{name:<10} {label:<20} {time.perf_counter() - started:6.1f}s")
    first = {}  # signature -> the first row running it
    same = {mode: first.setdefault(signature, mode) for mode, signature in signatures.items()}
    times = timing.step_times(
        {mode: steps[mode] for mode in first.values()}, device, WARMUP_STEPS, TIMED_STEPS
    )
    progress(f"{name:<10} {'step times':<20} {time.perf_counter() - started:6.1f}s")
    return [
        make_row(
            name,
            mode,
            figures[mode],
            figures["none"],
            times[same[mode]],
            None if same[mode] == mode else same[mode],
        )
        for mode in figures
    ]


def make_row(
    name: str,
    mode: str,
    figures: dict[str, object],
    none: dict[str, object],
    step: timing.StepTime,
    same_plan_as: str | None = None,
) -> Row:
    """One table row; `same_plan_as`: the row whose plan (and so whose timing) this one shares."""
    fields = dict(figures)
    if fields.get("backward_flops") is not None:
        overhead = fields["backward_flops"] - none["backward_flops"]
        fields["recompute_pct"] = round(
            100.0 * overhead / (none["forward_flops"] + none["backward_flops"]), 2
        )
    return Row(
        model=name,
        mode=mode,
        step_ms=round(step.median_ms, 3),
        step_q1_ms=round(step.q1_ms, 3),
        step_q3_ms=round(step.q3_ms, 3),
        same_plan_as=same_plan_as,
        **fields,
    )


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
