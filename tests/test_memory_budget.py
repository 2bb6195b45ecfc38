"""`memory_budget` mode: budget kept, every plan's bytes and flops exact, fastest plan chosen, profile cached."""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

from ac import ACConfig, apply_ac, budget_plans
from ac.budget import checkpoint as checkpoint_module
from ac.budget import costs, solver
from ac.budget.checkpoint import BudgetCheckpoint, make_budget_policy, run_plan
from ac.budget.profile import BlockProfile, HeldStorage, OpCost, profile_block
from ac.budget.solver import FULL, MODULES, NONE, SAC, Plan, budget_bytes, exhaustive, plans, solve
from ac.modes import budget_checkpoint_of
from ackit import models
from ackit.models import toy

BUDGETS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
SAVE, RECOMPUTE = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.MUST_RECOMPUTE
NO_EARLY_STOP = {"early_stop": False}  # every non-saved op is recomputed once: flops are exact


# Two toy blocks, so blocks of one structure share a budget; the report's moe-tiny as it is.
MODELS = {
    "toy": functools.partial(models.build_toy, n_blocks=2),
    "moe-tiny": models.MODELS["moe-tiny"].build,
}


def _run(tier, build, config: ACConfig) -> tuple[nn.Module, int, int]:
    """(model, recompute-free backward flops, activation bytes) with `config` applied."""
    built = build(tier.device)
    model, step, inputs = built.model, built.step, built.inputs
    apply_ac(model, config)
    flops = tier.flops(step)
    model_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    act = tier.activation_bytes(model, step, inputs)
    for name, param in model.named_parameters():
        param.grad = model_grads[name]
    return model, flops.backward, act


@pytest.mark.parametrize("name", list(MODELS))
def test_budget_is_kept_and_gradients_match(tier, name):
    build = MODELS[name]
    reference, none_bw, none_act = _run(tier, build, ACConfig(mode="none"))
    _, full_bw, full_act = _run(tier, build, ACConfig(mode="full", **NO_EARLY_STOP))
    for budget in BUDGETS:
        model, bw, act = _run(
            tier, build, ACConfig(mode="memory_budget", memory_budget=budget, **NO_EARLY_STOP)
        )
        assert act - full_act <= budget * (none_act - full_act), (budget, act)
        chosen = [chosen.plan for chosen in budget_plans(model)]
        assert len(chosen) == len(model.layers)
        # The profile's bytes and flops are what MemTracker and FlopCounterMode measure.
        assert act - full_act == sum(plan.bytes for plan in chosen), budget
        assert bw - none_bw == sum(plan.recompute_flops for plan in chosen), budget
        tier.assert_grads_match(reference, model)
    assert (none_bw, none_act) != (full_bw, full_act)


def _apply_budget(model: nn.Module, budget: float, device_costs: costs.DeviceCosts) -> None:
    """memory_budget mode priced with `device_costs` instead of this device's measured ones."""
    budget_fn = BudgetCheckpoint(budget, model.layers.children(), device_costs=device_costs)
    for name, block in list(model.layers.named_children()):
        model.layers.register_module(
            name, checkpoint_wrapper(block, checkpoint_fn=budget_fn, **NO_EARLY_STOP)
        )


def _measure(tier, built: models.Built) -> tuple[int, int]:
    flops = tier.flops(built.step)
    return flops.backward, tier.activation_bytes(built.model, built.step, built.inputs)


@pytest.mark.parametrize("name", list(MODELS))
def test_flop_priced_plans_recompute_no_more_than_op_or_layer_sac_at_equal_memory(tier, name):
    """Compiled regions price plans by flops alone (`costs.COMPILED`); there recompute decides."""
    build = MODELS[name]
    _, none_bw, none_act = _run(tier, build, ACConfig(mode="none"))
    _, _, full_act = _run(tier, build, ACConfig(mode="full"))
    for other in (ACConfig(selective_ac_option="op"), ACConfig(selective_ac_option="2")):
        _, other_bw, other_act = _run(tier, build, ACConfig(**{**vars(other), **NO_EARLY_STOP}))
        built = build(tier.device)
        _apply_budget(built.model, min(1.0, (other_act - full_act) / (none_act - full_act)), costs.COMPILED)
        bw, act = _measure(tier, built)
        assert act <= other_act, (other.selective_ac_option, act, other_act)
        assert bw - none_bw <= other_bw - none_bw, (other.selective_ac_option, bw, other_bw)


@pytest.mark.tiers("cpu")
def test_every_plan_holds_its_bytes_and_recomputes_its_flops():
    """No AC, full, sub-module and SAC plans alike: the planner's figures are MemTracker's and FlopCounterMode's."""
    from harness.measure import activation_bytes, flops

    built = MODELS["moe-tiny"](torch.device("cpu"))
    block, x = built.model.layers["0"], built.block_input().detach().requires_grad_()
    profile = profile_block(block, (x,), {})
    pareto = plans(profile, profile.no_ac_bytes, EAGER_LIKE, module_plans=True)
    pareto += plans(profile, profile.no_ac_bytes, costs.COMPILED, module_plans=False)
    assert {plan.kind for plan in pareto} == {NONE, FULL, MODULES, SAC}

    def held_and_recomputed(plan):
        step = functools.partial(run_plan, plan, NO_EARLY_STOP, block, x)
        return activation_bytes(block, step, [x]), flops(step).backward

    full_held, full_backward = held_and_recomputed(_full(profile))
    one_of_each_kind = {plan.kind: plan for plan in pareto}.values()
    for plan in one_of_each_kind:
        held, backward = held_and_recomputed(plan)
        assert held - full_held == plan.bytes, plan
        assert backward - (full_backward - profile.flops) == plan.recompute_flops, plan


def _full(profile: BlockProfile):
    return next(p for p in plans(profile, 0, costs.COMPILED, module_plans=False) if p.kind == FULL)


# Eager-like prices where the SAC dispatch mode dominates, as measured on CPU (bench/README.md).
EAGER_LIKE = costs.DeviceCosts(flops_per_s=5e10, op_s=5e-6, sac_dispatch_s=4e-5, region_s=3e-4)


@pytest.mark.tiers("cpu")
def test_at_equal_memory_the_plan_with_fewer_dispatched_ops_wins():
    """A sub-module plan and an op plan that hold and recompute the same: no dispatch mode wins."""
    mm = torch.ops.aten.mm.default
    size = 4096
    ops = (OpCost(mm, 0, 10**6, size, scope="attention"), OpCost(mm, 1, 10**6, size, scope="moe"))
    held = (
        HeldStorage(size, "attention", frozenset({"attention"}), frozenset()),  # only attention uses it
        HeldStorage(size, "moe", frozenset({""}), frozenset()),  # the block's own code holds the MoE output
    )
    profile = BlockProfile(ops, 2 * size, held, ("attention", "moe"))
    [plan] = solve(profile, 0.5, costs=EAGER_LIKE, module_plans=True)
    assert (plan.kind, plan.children, plan.bytes) == (MODULES, frozenset({"attention"}), size)
    [flop_priced] = solve(profile, 0.5, costs=costs.COMPILED)  # compiled: no dispatch cost, no module plans
    assert (flop_priced.kind, flop_priced.bytes, flop_priced.recompute_flops) == (SAC, size, 10**6)


@pytest.mark.tiers("cpu")
def test_budget_1_runs_blocks_without_any_dispatch_mode():
    built = MODELS["moe-tiny"](torch.device("cpu"))
    apply_ac(built.model, ACConfig(mode="memory_budget", memory_budget=1.0))
    built.step().backward()  # the first step profiles each block on fake tensors, under dispatch modes
    stacks = []
    for block in built.model.layers.values():
        block.attention.wq.register_forward_pre_hook(
            lambda *_: stacks.append(_get_current_dispatch_mode_stack())
        )
    built.step().backward()
    assert stacks == [[]] * len(built.model.layers)
    assert {chosen.kind for chosen in budget_plans(built.model)} == {NONE}


@pytest.mark.tiers("cpu")
def test_measuring_device_costs_draws_no_random_numbers():
    """The first budget step measures the device; dropout masks of that step must not move."""
    costs.measure.cache_clear()
    state = torch.get_rng_state()
    costs.measure(torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)


def _block_profile(name: str) -> BlockProfile:
    built = MODELS[name](torch.device("cpu"))
    return profile_block(built.model.layers["0"], (built.block_input(),), {})


def _random_profile(seed: int, n_ops: int = 12) -> BlockProfile:
    rng = random.Random(seed)
    ops = tuple(
        OpCost(torch.ops.aten.mm.default, i, rng.randrange(1, 1000) * 2**20, rng.randrange(1, 64) * 4096)
        for i in range(n_ops)
    )
    return BlockProfile(ops, no_ac_bytes=sum(op.bytes for op in ops) // 2)


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 0.75])
def test_recompute_within_5_percent_of_exhaustive_optimum(budget):
    profiles = [_block_profile("toy"), _block_profile("moe-tiny")] + [_random_profile(s) for s in range(5)]
    for profile in profiles:
        [plan], best = solve(profile, budget), exhaustive(profile, budget)
        assert plan.bytes <= budget_bytes(profile, budget) or plan.kind == NONE
        assert plan.recompute_flops <= 1.05 * best.recompute_flops, (budget, plan, best)


@pytest.mark.tiers("cpu")
def test_budget_ends_are_full_ac_and_no_ac():
    profile = _block_profile("moe-tiny")
    [empty] = solve(profile, 0.0)
    assert (empty.kind, empty.bytes, empty.recompute_flops) == (FULL, 0, profile.flops)
    [plan] = solve(profile, 1.0)
    assert plan.recompute_flops == 0 and plan.bytes <= profile.no_ac_bytes


@pytest.mark.tiers("cpu")
def test_profile_cache_is_hit_by_identical_blocks_and_later_steps_skip_it():
    built = MODELS["moe-tiny"](torch.device("cpu"))
    model, step = built.model, built.step
    apply_ac(model, ACConfig(mode="memory_budget", memory_budget=0.5))
    step()
    profiles = budget_checkpoint_of(model).profiles
    assert (profiles.misses, profiles.hits) == (1, len(model.layers) - 1)
    step()  # each block finds its plan by one lookup on (block, input layout)
    assert (profiles.misses, profiles.hits) == (1, len(model.layers) - 1)


@pytest.mark.tiers("cpu")
def test_profile_cache_misses_on_a_new_input_shape():
    checkpoint_fn = BudgetCheckpoint(0.5)
    block = toy.ToyBlock()
    for rows in (8, 8, 16):
        checkpoint_fn(block, torch.randn(rows, toy.DIM, requires_grad=True)).backward()
    assert (checkpoint_fn.profiles.misses, checkpoint_fn.profiles.hits) == (2, 0)
    assert len(checkpoint_fn.chosen()) == 2


class _PairBlock(nn.Module):
    """Takes a tuple of tensors and a keyword, as blocks with rotary tables and masks do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor], mask=None) -> torch.Tensor:
        return self.proj(x) * pair[0] + pair[1]


@pytest.mark.tiers("cpu")
def test_plan_is_found_again_for_fresh_tensors_of_one_layout():
    """The per-call key reads layouts, not tensor identities: fresh tensors each step hit it."""
    checkpoint_fn, block = BudgetCheckpoint(0.5), _PairBlock()
    for rows in (4, 4, 4, 6):
        pair = (torch.ones(8), torch.zeros(8))
        checkpoint_fn(block, torch.randn(rows, 8, requires_grad=True), pair, mask=None).sum().backward()
    assert checkpoint_fn.profiles.misses == 2 and len(checkpoint_fn.chosen()) == 2


@pytest.mark.tiers("cpu")
def test_profile_names_the_ops_the_policy_sees():
    built = MODELS["moe-tiny"](torch.device("cpu"))
    profile = _block_profile("moe-tiny")
    seen = []
    policy = make_budget_policy(frozenset())

    def recording(ctx, func, *args, **kwargs):
        seen.append(func)
        return policy(ctx, func, *args, **kwargs)

    block = built.model.layers["0"]
    contexts = lambda: torch.utils.checkpoint.create_selective_checkpoint_contexts(recording)  # noqa: E731
    torch.utils.checkpoint.checkpoint(block, built.block_input(), use_reentrant=False, context_fn=contexts)
    flop_ops = [op.op for op in profile.ops if op.flops]
    assert [func for func in seen if func in set(flop_ops)] == flop_ops


class _DataDependent(nn.Module):
    """Shapes depend on values (boolean indexing): fake tensors cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.proj(h[h > 0].view(-1, 1).expand(-1, 16)).sum()


@pytest.mark.tiers("cpu")
def test_data_dependent_block_is_profiled_on_real_tensors():
    torch.manual_seed(0)
    block = _DataDependent()
    x = torch.randn(8, 16, requires_grad=True)
    profile = profile_block(block, (x,), {})
    assert [op.op for op in profile.ops if op.flops] == [torch.ops.aten.mm.default] * 2
    assert profile.no_ac_bytes > 0
    BudgetCheckpoint(0.0)(block, x).backward()
    assert x.grad is not None


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        (-0.1, "is outside the allowed range"),
        (1.5, "is outside the allowed range"),
        ("half", "is a str, not a number"),
        (True, "is a bool, not a number"),
    ],
)
def test_bad_budget_is_rejected_before_work(budget, reason):
    with pytest.raises(ValueError, match=rf"memory budget .* {reason} .*\[0.0, 1.0\]"):
        BudgetCheckpoint(budget)
    with pytest.raises(ValueError, match=rf"{reason} .*\[0.0, 1.0\]"):
        solve(_random_profile(0, n_ops=2), budget)


MM = torch.ops.aten.mm.default


def _profile(*flops_and_bytes: tuple[int, int], no_ac_bytes: int) -> BlockProfile:
    """A block of matmuls, each (flops, bytes of its output)."""
    ops = tuple(OpCost(MM, i, flops, size) for i, (flops, size) in enumerate(flops_and_bytes))
    return BlockProfile(ops, no_ac_bytes)


@pytest.mark.tiers("cpu")
def test_budget_bytes_are_the_share_rounded_down_past_float_noise():
    """0.29 * 100 is 28.999999999999996 in floats: the budget means 29 bytes, and 0.295 still 29."""
    assert budget_bytes(_profile(no_ac_bytes=100), 0.29) == 29
    assert budget_bytes(_profile(no_ac_bytes=100), 0.295) == 29
    assert budget_bytes(_profile(no_ac_bytes=100), 0.0) == 0
    assert budget_bytes(_profile(no_ac_bytes=3 * 2**30), 1 / 3) == 2**30


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize("search", ["solve", "exhaustive"])
def test_a_plan_fits_a_budget_of_exactly_its_bytes_and_not_one_byte_less(search):
    """Saving the big matmul holds 29 bytes: a budget of 29 bytes admits it, one of 28 does not."""
    profile = _profile((10**6, 29), (1, 50), no_ac_bytes=100)
    find = (
        (lambda budget: solve(profile, budget)[0])
        if search == "solve"
        else functools.partial(exhaustive, profile)
    )
    at = find(0.29)
    assert (at.bytes, at.saved) == (29, frozenset({(MM, 0)}))
    below = find(0.28)
    assert below.bytes == 0 and below.recompute_flops == 10**6 + 1


@pytest.mark.tiers("cpu")
def test_blocks_sharing_a_budget_fit_exactly_their_bytes_together():
    """Two blocks at 54 bytes each may hold 29 + 79 = 108 bytes together, not at 53 each (106)."""
    profile = _profile((10**6, 29), (1, 50), no_ac_bytes=100)
    assert [plan.bytes for plan in solve(profile, 0.29, copies=3)] == [29, 29, 29]
    assert [plan.bytes for plan in solve(profile, 0.54, copies=2)] == [29, 79]
    assert [plan.bytes for plan in solve(profile, 0.535, copies=2)] == [29, 29]


# A second per flop, nothing else: plan times are exact integers, so ties are ties.
PER_FLOP = costs.DeviceCosts(flops_per_s=1.0, op_s=0.0, sac_dispatch_s=0.0, region_s=0.0)


@pytest.mark.tiers("cpu")
def test_blocks_sharing_a_budget_never_exceed_it_together_by_one_byte():
    """Two blocks of 10 bytes each: 10 + 10 fits, the faster 10 + 11 does not."""
    profile = _profile((100, 10), (1, 1), no_ac_bytes=11)
    assert [plan.bytes for plan in solve(profile, 10 / 11, copies=2, costs=PER_FLOP)] == [10, 10]
    assert [plan.bytes for plan in solve(profile, 1.0, copies=2, costs=PER_FLOP)] == [11, 11]


@pytest.mark.tiers("cpu")
def test_exhaustive_breaks_a_tie_in_time_with_fewer_bytes():
    """Saving the 8-byte matmul or the 5- and 1-byte ones saves 60 flops alike: 6 bytes win."""
    profile = _profile((60, 8), (50, 5), (10, 1), no_ac_bytes=20)
    plan = exhaustive(profile, 8 / 20, PER_FLOP)
    assert (plan.saved, plan.bytes, plan.seconds) == ({(MM, 1), (MM, 2)}, 6, 60.0)


@pytest.mark.tiers("cpu")
def test_no_ac_fits_a_budget_of_exactly_its_bytes():
    """A block with a matmul whose output is freed at once (0 bytes): only no AC avoids recomputing it."""
    profile = _profile((10**6, 60), (10**3, 0), no_ac_bytes=70)
    no_ac = Plan(NONE, bytes=70, recompute_flops=0, seconds=0.0)
    assert exhaustive(profile, 1.0) == no_ac
    assert list(solve(profile, 1.0)) == [no_ac]
    below = exhaustive(profile, 69 / 70)
    # The matmul whose output is freed cannot be served from a saved copy: it stays recomputed.
    assert (below.kind, below.recompute_flops) == (SAC, 10**3)


@pytest.mark.tiers("cpu")
def test_exhaustive_is_the_brute_force_optimum():
    """The reference: subsets of one, of several and of every op, least time first, then fewest bytes."""
    profile = _profile((100, 10), (60, 6), (50, 5), no_ac_bytes=24)
    by_budget = {budget: exhaustive(profile, budget / 24) for budget in (10, 11, 21, 24)}
    assert {budget: plan.saved for budget, plan in by_budget.items()} == {
        10: {(MM, 0)},
        11: {(MM, 1), (MM, 2)},
        21: {(MM, 0), (MM, 1), (MM, 2)},
        24: {(MM, 0), (MM, 1), (MM, 2)},  # as fast as no AC (nothing left to recompute), in fewer bytes
    }
    assert by_budget[24].kind == SAC and by_budget[24].bytes == 21


@pytest.mark.tiers("cpu")
def test_exhaustive_refuses_more_ops_than_it_can_try(monkeypatch):
    monkeypatch.setattr(solver, "MAX_EXHAUSTIVE", 3)
    assert exhaustive(_profile((1, 1), (1, 1), (1, 1), no_ac_bytes=3), 1.0).kind == SAC
    with pytest.raises(ValueError, match=r"^exhaustive search over 4 ops; at most 3 are allowed$"):
        exhaustive(_profile((1, 1), (1, 1), (1, 1), (1, 1), no_ac_bytes=4), 1.0)


@pytest.mark.tiers("cpu")
def test_budget_policy_decides_alike_when_older_torch_asks_during_recompute():
    """torch before 2.10 calls the policy in the recompute too (is_recompute=True): each op's
    index counts from 0 again there, so the recompute saves and recomputes what forward did."""
    add = torch.ops.aten.add.Tensor
    policy = make_budget_policy(frozenset({(MM, 1), (add, 0)}))
    calls = [MM, add, MM, add, MM]
    want = [RECOMPUTE, SAVE, SAVE, RECOMPUTE, RECOMPUTE]
    assert [policy(SelectiveCheckpointContext(is_recompute=False), func) for func in calls] == want
    assert [policy(SelectiveCheckpointContext(is_recompute=True), func) for func in calls] == want


class _Affine(nn.Module):
    """Scales or shifts, by keyword: the same tensors run different ops."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, scale=None, shift=None, options=None) -> torch.Tensor:
        h = self.proj(x)
        return h * scale if scale is not None else h + shift


@pytest.mark.tiers("cpu")
def test_the_same_tensors_under_another_keyword_are_profiled_apart():
    checkpoint_fn, block = BudgetCheckpoint(0.5), _Affine()
    x, t = torch.randn(4, 8, requires_grad=True), torch.randn(8)
    checkpoint_fn(block, x, scale=t).sum().backward()
    checkpoint_fn(block, x, shift=t).sum().backward()
    assert checkpoint_fn.profiles.misses == 2


@pytest.mark.tiers("cpu")
def test_an_unhashable_argument_still_finds_its_plan_again():
    """A block may take a plain (unhashable) options object: the call key reads its repr."""
    checkpoint_fn, block = BudgetCheckpoint(0.5), _Affine()
    for _ in range(2):
        options = {"fused"}  # a set: no hash, and no container the key walks
        checkpoint_fn(
            block, torch.randn(4, 8, requires_grad=True), scale=2.0, options=options
        ).sum().backward()
    assert len(checkpoint_fn.chosen()) == 1


@pytest.mark.tiers("cpu")
def test_blocks_of_one_structure_share_a_budget_and_others_do_not(monkeypatch):
    """Identical blocks are solved once, as copies of one block; a block of another structure alone."""
    solved = []

    def counting(profile, budget, copies, *args, **kwargs):
        solved.append(copies)
        return solve(profile, budget, copies, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "solve", counting)
    blocks = [toy.ToyBlock(), toy.ToyBlock(), _Affine()]
    checkpoint_fn = BudgetCheckpoint(0.5, blocks, device_costs=EAGER_LIKE)
    for block in blocks[:2]:
        checkpoint_fn(block, torch.randn(8, toy.DIM, requires_grad=True)).sum().backward()
    checkpoint_fn(blocks[2], torch.randn(4, 8, requires_grad=True), scale=2.0).sum().backward()
    assert solved == [2, 1]


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "budget-1"])
def test_a_block_run_as_it_is_keeps_its_keywords(grad):
    """Without grad, and with a budget that holds everything (no AC), the block runs as it is."""
    block, x = _Affine(), torch.randn(4, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        assert torch.equal(BudgetCheckpoint(1.0 if grad else 0.5)(block, x, scale=2.0), block(x, scale=2.0))


@pytest.mark.tiers("cpu")
def test_a_budget_without_preserved_rng_state_still_plans(tier):
    """preserve_rng_state=False wraps the budget's checkpoint function to watch for random ops;
    the budget must still decide: at 1.0 nothing is recomputed."""
    config = ACConfig(mode="memory_budget", memory_budget=1.0, preserve_rng_state=False)
    _, none_bw, _ = _run(tier, MODELS["toy"], ACConfig(mode="none"))
    _, budget_bw, _ = _run(tier, MODELS["toy"], config)
    assert budget_bw == none_bw


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize("name", MODELS)
def test_eager_plans_price_each_op_at_the_time_it_took(name):
    """Eager recompute costs wall time, so its plans weigh ops by a timed real forward; fake
    tensors' metadata queries and the real run's detaching of saved outputs must not stop that."""
    built = MODELS[name](torch.device("cpu"))
    block, x = built.model.layers["0"], built.block_input().detach().requires_grad_()
    checkpoint_fn = BudgetCheckpoint(0.5)
    checkpoint_fn(block, x).sum().backward()
    (profile,) = checkpoint_fn.profiles.all()
    untimed = [op for op in profile.ops if op.flops and not op.seconds]
    assert profile.flops and not untimed, untimed


class _Named(nn.Module):
    """Takes keywords named as the checkpoint functions' own parameters."""

    def forward(self, x: torch.Tensor, block=None, plan=None, options=None) -> torch.Tensor:
        return x * 2


@pytest.mark.tiers("cpu")
@pytest.mark.parametrize(
    "config", [ACConfig(mode="memory_budget"), ACConfig(mode="full", preserve_rng_state=False)]
)
def test_block_keywords_named_like_the_wrappers_parameters_reach_the_block(config):
    model = nn.Module()
    model.layers = nn.ModuleList([_Named()])
    apply_ac(model, config)
    x = torch.ones(2, requires_grad=True)
    model.layers[0](x, block=1, plan=2, options=3).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 2.0))


class _TableBlock(nn.Module):
    """A block called with a row count only: no tensor argument to take a device from."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(8, 16))
        self.proj = nn.Linear(16, 16)

    def forward(self, rows: int) -> torch.Tensor:
        return torch.tanh(self.proj(self.table[:rows]))


class _Tables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_TableBlock(), _TableBlock()])

    def forward(self, rows: int) -> torch.Tensor:
        return sum(layer(rows) for layer in self.layers).sum()


@pytest.mark.tiers("cpu")
def test_a_block_called_without_tensors_is_timed_planned_and_keeps_its_gradients():
    torch.manual_seed(0)
    reference = _Tables()
    model = copy.deepcopy(reference)
    apply_ac(model, ACConfig(mode="memory_budget", memory_budget=0.5))
    reference(6).backward()
    model(6).backward()
    for (name, want), got in zip(reference.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad), name


@pytest.mark.tiers("cpu")
def test_chosen_plans_name_the_block_and_its_input_layout():
    block = _PairBlock()
    named = BudgetCheckpoint(1.0, {"layers.7": block})
    pair = (torch.ones(8), torch.zeros(8))
    named(block, torch.randn(4, 8, requires_grad=True), pair, mask=None).sum().backward()
    [chosen] = named.chosen()
    assert (chosen.block, chosen.kind, chosen.held_bytes) == ("layers.7", NONE, chosen.plan.bytes)
    assert chosen.layout == (
        "training=True autocast=False args=(4x8 float32 cpu grad, (8 float32 cpu, 8 float32 cpu)) "
        "kwargs={'mask': None}"
    )
