"""The measurements behind `python -m harness report`: every AC mode on every reference model.

Kept apart from the CLI so `python -m harness` stays free of torch until a
report is asked for.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ac import ACConfig, apply_ac
from harness import measure, models
from harness.modes import MODES

# Budget runs that hold what these modes hold, to compare recompute at equal memory.
MATCHED = ("op", "layer-2")


@dataclass(frozen=True)
class Row:
    model: str
    mode: str
    forward_flops: int
    backward_flops: int
    recompute_pct: float
    activation_bytes: int
    peak_bytes: int
    grads_bitwise_equal: bool
    cuda_activation_bytes: int | None = None
    cuda_peak_bytes: int | None = None
    step_ms: float | None = None


def measure_mode(
    name: str, config: ACConfig, device: torch.device, reference: nn.Module
) -> dict[str, object]:
    """One model with one mode applied; `reference` holds one no-AC step's gradients.

    Flops come first, so the memory passes run with gradients already allocated,
    as in training: their peak then shows activations, not the first gradients.
    """
    built = models.build(name, device)
    model, step, inputs = built.model, built.step, built.inputs
    apply_ac(model, config)
    flops = measure.flops(step)
    figures: dict[str, object] = {
        "forward_flops": flops.forward,
        "backward_flops": flops.backward,
        "grads_bitwise_equal": _grads_equal(reference, model),
    }
    memory = measure.memory(model, step, inputs)
    figures.update(activation_bytes=memory.activation, peak_bytes=memory.peak)
    if device.type == "cuda":
        figures["cuda_activation_bytes"] = measure.cuda_activation_bytes(step)
        figures["cuda_peak_bytes"] = measure.cuda_peak_bytes(step)
        figures["step_ms"] = _step_ms(step)
    return figures


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


def _step_ms(step: measure.Step, warmup: int = 2, runs: int = 5) -> float:
    """Median wall time of one forward+backward on CUDA."""
    times = []
    for i in range(warmup + runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        measure.scalar_loss(step()).backward()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


@contextlib.contextmanager
def comparable_grads(device: torch.device) -> Iterator[None]:
    """CUDA kernels with atomics (embedding and index_add backward) differ run to run:
    deterministic algorithms make no AC and every mode comparable bitwise, as on CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def run(names: list[str], device: torch.device, progress: Callable[[str], None]) -> dict[str, list[Row]]:
    """Every mode on every model, "none" first; `progress` gets one line per measurement."""
    with comparable_grads(device):
        return _run(names, device, progress)


def _run(names: list[str], device: torch.device, progress: Callable[[str], None]) -> dict[str, list[Row]]:
    rows: dict[str, list[Row]] = {}
    total, started = len(names) * (len(MODES) + len(MATCHED)), time.perf_counter()
    for name in names:
        reference = reference_model(name, device)
        rows[name] = []
        for mode, config in [*MODES.items(), *((f"budget@{m}", m) for m in MATCHED)]:
            if isinstance(config, str):  # matched: known once the mode it matches is measured
                config = ACConfig(mode="memory_budget", memory_budget=matched_budget(rows[name], config))
            figures = measure_mode(name, config, device, reference)
            baseline = figures if not rows[name] else asdict(rows[name][0])
            overhead = figures["backward_flops"] - baseline["backward_flops"]
            pct = 100.0 * overhead / (baseline["forward_flops"] + baseline["backward_flops"])
            rows[name].append(Row(model=name, mode=mode, recompute_pct=round(pct, 2), **figures))
            done = sum(map(len, rows.values()))
            progress(f"[{done}/{total}] {name:<10} {mode:<14} {time.perf_counter() - started:6.1f}s")
    return rows


def matched_budget(rows: list[Row], mode: str) -> float:
    """The memory budget that holds what `mode` held: its share of no AC's over full AC's."""
    act = {r.mode: r.activation_bytes for r in rows}
    return min(1.0, (act[mode] - act["full"]) / (act["none"] - act["full"]))


def device_for(choice: str) -> torch.device:
    """The device `--device` names; `auto` is CUDA where there is one."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA device; use --device cpu or auto")
    return torch.device(choice)
