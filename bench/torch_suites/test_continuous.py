"""MultiProcContinuousTest classes: torch keeps one set of ranks per class.

Four classes of eight all-reduce tests each (a suite has many classes; torch's runner
starts ranks for each, the pools keep theirs between classes). World size from
WORLD_SIZE (2 unless set).
"""

import os

import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcContinuousTest


class AllReduces:
    """The tests every class below runs."""

    world_size = int(os.environ.get("WORLD_SIZE", "2"))

    @classmethod
    def backend_str(cls) -> str:
        return "gloo"

    def _sum_of_ranks(self, scale: float) -> float:
        total = torch.tensor([scale * (self.rank + 1)])
        dist.all_reduce(total)
        return total.item()

    def _expected(self, scale: float) -> float:
        return scale * self.world_size * (self.world_size + 1) / 2

    def test_0(self):
        self.assertEqual(self._sum_of_ranks(1.0), self._expected(1.0))

    def test_1(self):
        self.assertEqual(self._sum_of_ranks(2.0), self._expected(2.0))

    def test_2(self):
        self.assertEqual(self._sum_of_ranks(0.0), 0.0)

    def test_3(self):
        self.assertEqual(self._sum_of_ranks(-1.0), self._expected(-1.0))

    def test_4(self):
        self.assertEqual(self._sum_of_ranks(0.5), self._expected(0.5))

    def test_5(self):
        self.assertEqual(self._sum_of_ranks(3.0), self._expected(3.0))

    def test_6(self):
        self.assertEqual(self._sum_of_ranks(4.0), self._expected(4.0))

    def test_7(self):
        self.assertEqual(self._sum_of_ranks(0.25), self._expected(0.25))


class TestAllReduceA(AllReduces, MultiProcContinuousTest):
    pass


class TestAllReduceB(AllReduces, MultiProcContinuousTest):
    pass


class TestAllReduceC(AllReduces, MultiProcContinuousTest):
    pass


class TestAllReduceD(AllReduces, MultiProcContinuousTest):
    pass
