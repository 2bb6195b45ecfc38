"""Live rank pools are a host budget split between xdist workers, not a per-process constant."""

from __future__ import annotations

import pytest

from harness.ranks.plugin import POOLS_PER_HOST, pools_per_process

pytestmark = pytest.mark.tiers("cpu")


def test_each_worker_keeps_its_share_of_the_hosts_pools_and_at_least_one():
    assert pools_per_process(1) == POOLS_PER_HOST
    assert pools_per_process(2) == POOLS_PER_HOST // 2
    assert pools_per_process(8) == 1
