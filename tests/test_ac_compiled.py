"""ACConfig(compile=True): every mode compiled per block keeps its guarantees.

The blocks compile with `measure.counting_backend()` (inductor's decompositions
and partitioner, no code generation, flops counted per graph), so the CPU tier
stays fast; one test compiles with inductor itself. Compiled graphs refuse
dispatch modes, so memory is what autograd saves (`saved_activation_bytes`) and
flops are those inside the compiled blocks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch._dynamo.backends.debugging import aot_eager

from ac import ACConfig, apply_ac, budget_plans
from ac.budget import BudgetCheckpoint, costs
from ac.traced import backend_for, traced_eager
from ackit import models
from ackit.models import moe
from ackit.presets import PRESETS
from harness import measure

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.usefixtures("fresh_dynamo")]
ARGS = moe.MoEArgs(n_layers=2, dropout=0.1)
COMPILED_MODES = ("none", "full", "layer-2", "op", "budget-0.5")
GRAD_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # compiled graphs may reorder float sums


@dataclasses.dataclass(frozen=True)
class Compiled:
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    flops: measure.Flops
    saved_bytes: int


def _compiled(config: ACConfig, backend: str) -> tuple[moe.MoETransformer, torch.Tensor, torch.Tensor]:
    model = apply_ac(moe.build(ARGS), dataclasses.replace(config, compile=True, compile_backend=backend))
    tokens, targets = moe.batch(ARGS)
    return model, tokens, targets


def _seeded_step(model, tokens, targets):
    torch.manual_seed(5)
    return moe.loss_fn(model(tokens), targets)


def _compile_every_mode() -> dict[str, Compiled]:
    """Each mode compiled once; identical blocks and modes share graphs (torch caches them)."""
    backend = measure.counting_backend()
    results = {}
    for mode in COMPILED_MODES:
        model, tokens, targets = _compiled(dataclasses.replace(PRESETS[mode], early_stop=False), backend)
        loss = _seeded_step(model, tokens, targets)
        loss.backward()
        grads = {name: grad.clone() for name, grad in measure.named_grads(model).items()}
        step = lambda m=model, t=tokens, y=targets: _seeded_step(m, t, y)  # noqa: E731
        flops = measure.compiled_flops(step)
        saved = measure.saved_activation_bytes(step, [*model.parameters(), tokens])
        results[mode] = Compiled(loss.detach(), grads, flops, saved)
    return results


@pytest.mark.compiled
def test_compiled_modes_keep_gradients_recompute_and_memory_order():
    """One test, so xdist compiles the modes once (a module fixture would compile once per worker)."""
    compiled = _compile_every_mode()
    for mode in COMPILED_MODES[1:]:
        assert torch.equal(compiled[mode].loss, compiled["none"].loss), mode
        for name, grad in compiled["none"].grads.items():
            torch.testing.assert_close(
                compiled[mode].grads[name], grad, **GRAD_TOLERANCE, msg=f"{mode} {name}"
            )
    assert len({c.flops.forward for c in compiled.values()}) == 1, "AC must not change forward flops"
    backward = {mode: c.flops.backward for mode, c in compiled.items()}
    assert backward["none"] < backward["op"] < backward["full"], backward
    assert backward["none"] < backward["layer-2"] < backward["full"], backward
    assert backward["none"] <= backward["budget-0.5"] < backward["full"], backward
    saved = {mode: c.saved_bytes for mode, c in compiled.items()}
    assert saved["full"] < saved["layer-2"] < saved["none"], saved
    assert saved["full"] < saved["op"] < saved["none"], saved
    assert saved["full"] < saved["budget-0.5"] < saved["none"], saved


class _DropoutBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.dropout(torch.relu(self.up(x))))


def _inductor_step(config: ACConfig) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.layers = nn.ModuleList([_DropoutBlock()])
    apply_ac(model, dataclasses.replace(config, compile=True, compile_backend="inductor"))
    x = torch.randn(16, 32)
    torch.manual_seed(3)
    model.layers[0](x).sum().backward()
    return model


@pytest.mark.compiled
def test_inductor_memory_budget_with_dropout_matches_inductor_no_ac():
    """The one inductor test (generated code; one small block keeps its two compiles quick):
    the eager plan, run as a SAC region, replays inductor's dropout exactly."""
    budget = _inductor_step(PRESETS["budget-0.25"])
    [plan] = budget_plans(budget)
    assert plan.kind != "none"  # the block is checkpointed: its dropout is recomputed or saved
    measure.assert_grads_match(_inductor_step(PRESETS["none"]), budget, **GRAD_TOLERANCE)


@pytest.mark.compiled
def test_compiled_budget_without_preserved_rng_state_runs_and_stays_silent(recwarn):
    """The budget wrapper runs eagerly around compiled regions: no watching dispatch mode there,
    which compiled code refuses; compiled regions replay their random ops anyway."""
    config = ACConfig(
        mode="memory_budget", compile=True, compile_backend="aot_eager", preserve_rng_state=False
    )
    built = models.build("toy", n_blocks=2)
    apply_ac(built.model, config)
    built.step().backward()
    plans = budget_plans(built.model)
    assert any(plan.kind != "none" for plan in plans)  # a region is compiled
    assert not [w for w in recwarn if "preserve_rng_state" in str(w.message)]


def test_bad_compile_backend_is_named_before_any_work():
    with pytest.raises(
        ValueError, match=r"compile_backend='inductr' is not one of \['traced_eager', .*'inductor'"
    ):
        ACConfig(compile=True, compile_backend="inductr")


TRACED_BACKENDS = ("traced_eager", "aot_eager")  # ac.traced's backend, and the aot_eager it speeds up


@pytest.mark.compiled
@pytest.mark.parametrize("backend", TRACED_BACKENDS)
@pytest.mark.parametrize("mode", ["op", "budget-0.5"])
def test_traced_eager_sac_is_bitwise_equal_to_eager_no_ac(mode, backend):
    """The traced-eager backends run eager kernels from the traced graph: op-SAC and the
    budget there give the gradients of plain eager no AC, bit for bit, in float32, dropout
    included."""
    reference = moe.build(ARGS)
    tokens, targets = moe.batch(ARGS)
    _seeded_step(reference, tokens, targets).backward()
    model, tokens, targets = _compiled(PRESETS[mode], backend)
    _seeded_step(model, tokens, targets).backward()
    measure.assert_grads_match(reference, model)
    if mode.startswith("budget"):  # half the memory: some block runs a checkpointed region
        assert any(chosen.kind != "none" for chosen in budget_plans(model))


class _CountedOpCalls:
    """Counts calls through `OpOverload.__call__`, the Python wrapper traced_eager skips."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        wrapped = torch._ops.OpOverload.__call__

        def counted(op, /, *args, **kwargs):
            self.calls += 1
            return wrapped(op, *args, **kwargs)

        monkeypatch.setattr(torch._ops.OpOverload, "__call__", counted)


def _relu_mm_sum(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.relu(x @ w).sum(),)


@pytest.mark.parametrize(("backend", "wrapped_calls"), [(traced_eager, False), (aot_eager, True)])
def test_a_traced_eager_graph_calls_its_ops_directly(backend, wrapped_calls, monkeypatch):
    """The backend on its own (no dynamo, so `make mutate` runs it): once its first call has
    traced, a forward and backward call no op through `OpOverload.__call__` (aot_eager, the
    control, calls each through it) and give eager's gradient, bit for bit."""
    x, w = torch.randn(4, 4), torch.randn(4, 4, requires_grad=True)
    run = backend(torch.fx.symbolic_trace(_relu_mm_sum), [x, w])
    run(x, w)[0].backward()
    w.grad = None
    counter = _CountedOpCalls(monkeypatch)
    run(x, w)[0].backward()
    assert (counter.calls > 0) == wrapped_calls, counter.calls
    assert torch.equal(w.grad, torch.autograd.grad(_relu_mm_sum(x, w)[0], w)[0])


def test_only_the_traced_eager_name_maps_to_this_packages_backend():
    assert backend_for("traced_eager") is traced_eager
    assert [backend_for(name) for name in ("aot_eager", "inductor")] == ["aot_eager", "inductor"]


@pytest.mark.compiled
@pytest.mark.parametrize(("backend", "wrapped_calls"), [("traced_eager", False), ("aot_eager", True)])
def test_traced_eager_graphs_call_ops_without_their_python_wrapper(backend, wrapped_calls, monkeypatch):
    """After the trace, a forward and backward of a traced_eager block call no op through
    `OpOverload.__call__`; aot_eager's graphs call every op through it (the control). No
    dropout: under SAC a random op is an operand of torch's rng-state operators, which call it."""
    args = dataclasses.replace(ARGS, dropout=0.0)
    config = dataclasses.replace(PRESETS["op"], compile=True, compile_backend=backend)
    model, (tokens, targets) = apply_ac(moe.build(args), config), moe.batch(args)
    _seeded_step(model, tokens, targets).backward()  # traces and compiles
    counter = _CountedOpCalls(monkeypatch)
    _seeded_step(model, tokens, targets).backward()
    assert (counter.calls > 0) == wrapped_calls, counter.calls


@pytest.mark.parametrize("backend", TRACED_BACKENDS)
def test_traced_eager_regions_are_priced_without_dispatch_or_region_costs(backend):
    block, x = nn.Linear(4, 4), torch.randn(2, 4)
    measured = costs.measure(torch.device("cpu"))
    traced = BudgetCheckpoint(0.5, compile_backend=backend).pricing(block, (x,))
    assert (traced.sac_dispatch_s, traced.region_s) == (0.0, 0.0)
    assert (traced.op_s, traced.flops_per_s, traced.op_times) == (measured.op_s, measured.flops_per_s, True)
    assert BudgetCheckpoint(0.5).pricing(block, (x,)) == measured
    assert BudgetCheckpoint(0.5, compile_backend="inductor").pricing(block, (x,)) == costs.COMPILED
