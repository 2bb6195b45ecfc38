"""A MultiProcContinuousTest class: torch keeps one set of ranks for the whole class.

World size from WORLD_SIZE (2 unless set); eight all-reduce tests.
"""

import os

import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcContinuousTest


class TestAllReduceContinuous(MultiProcContinuousTest):
    world_size = int(os.environ.get("WORLD_SIZE", "2"))

    @classmethod
    def backend_str(cls) -> str:
        return "gloo"

    def _sum_of_ranks(self, scale: float) -> float:
        total = torch.tensor([scale * (self.rank + 1)])
        dist.all_reduce(total)
        return total.item()

    def test_0(self):
        self.assertEqual(self._sum_of_ranks(1.0), self.world_size * (self.world_size + 1) / 2)

    def test_1(self):
        self.assertEqual(self._sum_of_ranks(2.0), self.world_size * (self.world_size + 1))

    def test_2(self):
        self.assertEqual(self._sum_of_ranks(0.0), 0.0)

    def test_3(self):
        self.assertEqual(self._sum_of_ranks(-1.0), -self.world_size * (self.world_size + 1) / 2)

    def test_4(self):
        self.assertEqual(self._sum_of_ranks(1.0), self.world_size * (self.world_size + 1) / 2)

    def test_5(self):
        self.assertEqual(self._sum_of_ranks(3.0), 3 * self.world_size * (self.world_size + 1) / 2)

    def test_6(self):
        self.assertEqual(self._sum_of_ranks(1.0), self.world_size * (self.world_size + 1) / 2)

    def test_7(self):
        self.assertEqual(self._sum_of_ranks(0.5), self.world_size * (self.world_size + 1) / 4)
