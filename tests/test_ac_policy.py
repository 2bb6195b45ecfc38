"""The op-SAC policy's decisions, op by op."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    SelectiveCheckpointContext,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from ac.policy import built_in_saved_ops, lookup_op, make_op_sac_policy, saved_ops

pytestmark = pytest.mark.tiers("cpu")
aten = torch.ops.aten
FORWARD = SelectiveCheckpointContext(is_recompute=False)
RECOMPUTE = SelectiveCheckpointContext(is_recompute=True)
# Matmuls op-SAC recomputes (every second one, forced shapes) are PREFER_RECOMPUTE, as in
# torchtitan: eager recomputes them; a compiled partitioner may still save one if that is cheaper.
SAVE, RECOMP = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE


@pytest.fixture(autouse=True)
def _fresh_saved_ops():
    """Each test finds the saved ops anew: the set is cached per process, and a test must
    fail when the lookup behind it breaks, not pass on a set an earlier test built."""
    built_in_saved_ops.cache_clear()


def _mm(n_in: int = 8, n_out: int = 8) -> tuple:
    return (aten.mm.default, torch.empty(4, n_in), torch.empty(n_in, n_out))


@pytest.mark.parametrize(
    "name",
    [
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "bmm",
        "addmm",
        "linear",
        "max",
        "topk",
    ],
)
def test_every_backend_attention_and_matmul_op_is_saved(name):
    assert getattr(aten, name).default in saved_ops()


def test_only_the_whole_tensor_max_is_saved():
    """As torchtitan: `max.dim` returns a router's indices too, which need not be held."""
    assert aten.max.dim not in saved_ops()
    assert aten.max.default in saved_ops()


def test_topk_is_saved_so_a_recompute_routes_alike():
    policy = make_op_sac_policy([])
    assert policy(FORWARD, aten.topk.default, torch.empty(4, 8), 2) == SAVE


def test_collectives_are_saved():
    functional = torch.ops._c10d_functional
    assert functional.reduce_scatter_tensor.default in saved_ops()
    assert functional.all_to_all_single.default in saved_ops()


def test_ops_this_torch_build_lacks_are_left_out():
    """Extra saved ops are named by string; a name or overload this build lacks is skipped, not an error."""
    assert lookup_op("aten.mm.default") is aten.mm.default
    assert lookup_op("aten.no_such_op.default") is None
    assert lookup_op("aten.mm.no_such_overload") is None


def test_cheap_ops_are_recomputed():
    policy = make_op_sac_policy([])
    assert policy(FORWARD, aten.relu.default, torch.empty(2)) == CheckpointPolicy.PREFER_RECOMPUTE


def test_even_numbered_matmuls_are_recomputed():
    policy = make_op_sac_policy([])
    assert [policy(FORWARD, *_mm()) for _ in range(5)] == [SAVE, RECOMP, SAVE, RECOMP, SAVE]


def test_recompute_calls_are_counted_apart_from_forward():
    """Older torch also asks during recompute; it must decide as forward did."""
    policy = make_op_sac_policy([])
    forward = [policy(FORWARD, *_mm()) for _ in range(3)]
    assert [policy(RECOMPUTE, *_mm()) for _ in range(3)] == forward


def test_each_policy_starts_counting_afresh():
    first = make_op_sac_policy([])
    first(FORWARD, *_mm())
    assert make_op_sac_policy([])(FORWARD, *_mm()) == SAVE


@pytest.mark.parametrize(
    "call",
    [
        (aten.mm.default, torch.empty(4, 8), torch.empty(8, 16)),
        (aten.addmm.default, torch.empty(16), torch.empty(4, 8), torch.empty(8, 16)),
        (aten.linear.default, torch.empty(4, 8), torch.empty(16, 8)),
    ],
    ids=["mm", "addmm", "linear"],
)
def test_forced_shape_is_recomputed_and_not_counted(call):
    policy = make_op_sac_policy([(8, 16)])
    assert policy(FORWARD, *call) == RECOMP
    assert policy(FORWARD, *_mm()) == SAVE  # the forced matmul did not take number 1


def test_other_shapes_are_not_forced():
    policy = make_op_sac_policy([(8, 16)])
    assert policy(FORWARD, *_mm(16, 8)) == SAVE


def test_math_attention_is_saved_as_torchtitan_saves_it():
    assert aten._scaled_dot_product_attention_math.default in saved_ops()


class _On:
    """What the policy reads of a tensor argument: its device."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


@pytest.mark.parametrize(
    ("source", "kwargs", "expected"),
    [
        ("cuda", {"device": torch.device("cpu")}, SAVE),
        ("cuda", {"device": "cpu", "non_blocking": True}, SAVE),
        ("cpu", {"device": torch.device("cpu")}, CheckpointPolicy.PREFER_RECOMPUTE),
        ("cuda", {"device": torch.device("cuda")}, CheckpointPolicy.PREFER_RECOMPUTE),
        ("cuda", {"dtype": torch.bfloat16}, CheckpointPolicy.PREFER_RECOMPUTE),
    ],
    ids=["cuda-to-cpu", "cuda-to-cpu-by-name", "cpu-to-cpu", "cuda-to-cuda", "cast"],
)
def test_a_copy_from_a_device_to_the_cpu_is_saved(source, kwargs, expected):
    """An offloaded activation (or a D2H copy of routing metadata) is saved: recomputing it
    would copy, and sync, again."""
    policy = make_op_sac_policy([])
    assert policy(FORWARD, aten._to_copy.default, _On(source), **kwargs) == expected


# Eager FlexAttention is the point here (the policy sees its HOP); torch warns it is unfused.
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")
def test_flex_attentions_higher_order_op_is_saved_and_reaches_the_policy_on_cpu():
    """FlexAttention runs forward on CPU in this torch (its CPU backward is not implemented,
    so the block runs without grad): its higher-order op reaches the policy and is saved."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    decisions = {}

    def recording(ctx, func, *args, **kwargs):
        decisions[func] = policy(ctx, func, *args, **kwargs)
        return decisions[func]

    policy = make_op_sac_policy([])
    q = torch.randn(1, 2, 16, 8)
    checkpoint(
        flex.flex_attention,
        q,
        q,
        q,
        use_reentrant=False,
        context_fn=lambda: create_selective_checkpoint_contexts(recording),
    )
    assert decisions[torch.ops.higher_order.flex_attention] == SAVE


def test_varlen_attention_is_saved_where_this_torch_has_it():
    pytest.importorskip("torch.nn.attention.varlen")
    assert torch.ops.torch_attn._varlen_attn.default in saved_ops()
