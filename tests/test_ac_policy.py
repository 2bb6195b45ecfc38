"""The op-SAC policy's decisions, op by op."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import CheckpointPolicy, SelectiveCheckpointContext

from ac.policy import lookup_op, make_op_sac_policy, saved_ops

pytestmark = pytest.mark.tiers("cpu")
aten = torch.ops.aten
FORWARD = SelectiveCheckpointContext(is_recompute=False)
RECOMPUTE = SelectiveCheckpointContext(is_recompute=True)
SAVE, RECOMP = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.MUST_RECOMPUTE


@pytest.fixture(autouse=True)
def _fresh_saved_ops():
    """Each test finds the saved ops anew: the set is cached per process, and a test must
    fail when the lookup behind it breaks, not pass on a set an earlier test built."""
    saved_ops.cache_clear()


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
