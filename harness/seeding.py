"""One seed for every random number generator a test may draw from.

Tiered tests start from it in the pytest process and in every rank, so a
result does not depend on which tests ran before, and a repro line can name it.
"""

from __future__ import annotations

import random
import sys

DEFAULT_SEED = 0


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device, lazily), Python's `random` and numpy's global generator."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)
