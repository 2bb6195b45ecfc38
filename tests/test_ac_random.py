"""AC keeps gradients exact when blocks draw random numbers: saved or recomputed
together, replayed from the preserved RNG state, eager and compiled."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

import ac.policy
from ac import ACConfig, apply_ac, budget_plans
from ac.budget.profile import profile_block
from ac.rng import draws_random
from ackit.models import moe
from ackit.presets import PRESETS
from harness import measure
from tests.random_ops import NOISY, noisy_dropout

pytestmark = pytest.mark.tiers("cpu")
aten = torch.ops.aten
DIM, ROWS, P = 32, 16, 0.3


class NoisyBlock(nn.Module):
    """A fused random op, then (optionally) CPU's in-place dropout after it."""

    def __init__(self, inplace_dropout: bool) -> None:
        super().__init__()
        self.inplace_dropout = inplace_dropout
        self.a, self.b, self.c = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = noisy_dropout(self.a(x), P)
        h = self.b(h)
        if self.inplace_dropout:
            h = F.dropout(h, P, self.training)
        return self.c(h).relu()


class NoisyModel(nn.Module):
    def __init__(self, inplace_dropout: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(i): NoisyBlock(inplace_dropout) for i in range(2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers.values():
            x = block(x)
        return x.sum()


def _noisy_step(config: ACConfig | None, inplace_dropout: bool = True) -> NoisyModel:
    torch.manual_seed(0)
    model = NoisyModel(inplace_dropout)
    x = torch.randn(ROWS, DIM)
    if config is not None:
        apply_ac(model, config)
    torch.manual_seed(7)
    model(x).backward()
    return model


def test_draws_random_reads_the_tag_and_a_zero_dropout_p():
    q = torch.empty(1, 1, 4, 8)
    assert draws_random(aten.native_dropout.default, (q, 0.0, True), {})  # CPU draws even at p=0
    assert draws_random(aten.bernoulli_.float, (q, 0.5), {})
    assert draws_random(NOISY, (q, 0.5), {})
    sdpa = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert draws_random(sdpa, (q, q, q), {"dropout_p": 0.1})
    assert not draws_random(sdpa, (q, q, q, 0.0), {})
    assert not draws_random(sdpa, (q, q, q), {})
    assert not draws_random(aten.mm.default, (q, q), {})


def test_op_sac_recomputes_a_saved_op_that_draws(monkeypatch):
    """An op in the save set that draws random numbers is recomputed, not saved."""
    monkeypatch.setattr(ac.policy, "saved_ops", lambda: frozenset({NOISY, aten.mm.default}))
    reference = _noisy_step(None)
    model = _noisy_step(dataclasses.replace(PRESETS["op-no-force"], preserve_rng_state=True))
    measure.assert_grads_match(reference, model)


@pytest.mark.parametrize(
    ("func", "args", "want"),
    [
        (
            aten._scaled_dot_product_efficient_attention.default,
            (None, None, None, None, True, 0.2),
            "recompute",
        ),
        (aten._scaled_dot_product_flash_attention.default, (None, None, None, 0.2), "recompute"),
        (aten._scaled_dot_product_flash_attention.default, (None, None, None, 0.0), "save"),
        (aten._scaled_dot_product_cudnn_attention.default, (None, None, None, None, True, 0.0), "save"),
    ],
    ids=["efficient-dropout", "flash-dropout", "flash-no-dropout", "cudnn-no-dropout"],
)
def test_attention_with_dropout_is_recomputed_unlike_torchtitan(func, args, want):
    """torchtitan saves every SDPA; a saved SDPA that drew its mask would shift later random ops."""
    policy = ac.policy.make_op_sac_policy([])
    decision = policy(SelectiveCheckpointContext(is_recompute=False), func, *args)
    assert decision == (CheckpointPolicy.MUST_SAVE if want == "save" else CheckpointPolicy.MUST_RECOMPUTE)


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75])
def test_budget_recomputes_random_ops_it_cannot_save_together(budget):
    """In-place dropout cannot be served from a saved copy, so the fused random op is recomputed too."""
    reference = _noisy_step(None)
    model = _noisy_step(ACConfig(mode="memory_budget", memory_budget=budget, preserve_rng_state=True))
    measure.assert_grads_match(reference, model)


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75, 1.0])
def test_budget_saves_a_blocks_random_ops_together_or_not_at_all(budget):
    reference = _noisy_step(None, inplace_dropout=False)
    model = _noisy_step(ACConfig(mode="memory_budget", memory_budget=budget), inplace_dropout=False)
    measure.assert_grads_match(reference, model)
    profile = profile_block(NoisyBlock(False), (torch.randn(ROWS, DIM, requires_grad=True),), {})
    random_keys = {(op.op, op.index) for op in profile.ops if op.random}
    assert random_keys == {(NOISY, 0)}
    for chosen in budget_plans(model):
        assert random_keys <= chosen.plan.saved or not random_keys & chosen.plan.saved


def test_preserve_rng_state_false_warns_once_naming_block_and_op():
    config = ACConfig(mode="full", preserve_rng_state=False)
    with pytest.warns(UserWarning) as record:
        model = _noisy_step(config)
        model(torch.randn(ROWS, DIM)).backward()
    warned = [w for w in record if "preserve_rng_state" in str(w.message)]
    assert len(warned) == 2, warned  # one per block, the first step only
    assert str(warned[0].message) == (
        "activation checkpointing of block 'layers.0': op ac_test.noisy_dropout.default draws random "
        "numbers and preserve_rng_state=False, so the recompute draws different ones and the gradients "
        "are wrong; set preserve_rng_state=True"
    )
    # Attributed to ac.rng, so `-W ignore::UserWarning:ac.rng` silences it.
    assert warned[0].filename.endswith(os.path.join("ac", "rng.py"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=UserWarning, module="ac.rng")
        _noisy_step(config)


def _blocks_dispatch_modes(model: NoisyModel) -> list[list]:
    """The dispatch modes each block's first Linear runs under, per call."""
    stacks = []
    for block in model.layers.values():
        block.a.register_forward_pre_hook(lambda *_: stacks.append(_get_current_dispatch_mode_stack()))
    return stacks


def test_only_the_first_training_forward_is_watched():
    """Later steps pay for no dispatch mode; an eval forward before training does not use up the watch."""
    torch.manual_seed(0)
    model = apply_ac(NoisyModel(), ACConfig(mode="full", preserve_rng_state=False))
    stacks = _blocks_dispatch_modes(model)
    x = torch.randn(ROWS, DIM)
    with torch.no_grad():
        model(x)
    assert stacks == [[], []]
    stacks.clear()
    with pytest.warns(UserWarning, match="preserve_rng_state=False"):
        loss = model(x)
    assert [len(stack) for stack in stacks] == [1, 1]
    loss.backward()
    stacks.clear()
    model(x)
    assert stacks == [[], []]


class _Attention(nn.Module):
    """Scaled dot-product attention with every default: the fused op gets no dropout_p at all."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, ROWS, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)  # 2 heads
        return F.scaled_dot_product_attention(q, k, v).sum()


def test_attention_without_dropout_argument_is_silent():
    model = nn.Module()
    model.layers = nn.ModuleDict({"0": _Attention()})
    apply_ac(model, ACConfig(mode="full", preserve_rng_state=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.layers["0"](torch.randn(ROWS, DIM)).backward()


@pytest.mark.parametrize("training", [True, False], ids=["no-random-op", "eval"])
def test_preserve_rng_state_false_is_silent_without_random_ops(training):
    model = apply_ac(
        moe.build(moe.MoEArgs(n_layers=1, dropout=0.0 if training else 0.5)),
        ACConfig(mode="full", preserve_rng_state=False),
    )
    model.train(training)
    tokens, targets = moe.batch(model.args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moe.loss_fn(model(tokens), targets).backward()


COMPILED_ARGS = moe.MoEArgs(n_layers=1, dropout=0.2)


def _compiled_step(config: ACConfig | None, backend: str) -> tuple[torch.Tensor, nn.Module]:
    """torchtitan's order: AC on each block, then each block compiled."""
    model = moe.build(COMPILED_ARGS)
    if config is not None:
        apply_ac(model, config)
    for block in model.layers.values():
        block.compile(backend=backend)
    tokens, targets = moe.batch(COMPILED_ARGS)
    torch.manual_seed(123)
    loss = moe.loss_fn(model(tokens), targets)
    loss.backward()
    return loss.detach(), model


@pytest.fixture
def compiled_reference(fresh_dynamo) -> tuple[torch.Tensor, nn.Module]:
    return _compiled_step(None, "aot_eager_decomp_partition")


@pytest.mark.compiled
def test_compiled_memory_budget_keeps_dropout_gradients(compiled_reference):
    """torch's budget partitioner recomputes dropout with fresh random numbers; our plan does not."""
    config = dataclasses.replace(PRESETS["budget-0.5"], preserve_rng_state=True)
    loss, model = _compiled_step(config, "aot_eager_decomp_partition")
    assert torch.equal(loss, compiled_reference[0])
    measure.assert_grads_match(compiled_reference[1], model, rtol=1e-5, atol=1e-6)


def test_memory_budget_leaves_torch_compile_budget_alone():
    before = torch._functorch.config.activation_memory_budget
    apply_ac(moe.build(dataclasses.replace(COMPILED_ARGS, n_layers=2)), PRESETS["budget-0.25"])
    assert torch._functorch.config.activation_memory_budget == before
