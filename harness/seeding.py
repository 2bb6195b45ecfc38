"""One seed for every random number generator a test may draw from.

Tiered tests start from it in the pytest process and in every rank, so a
result does not depend on which tests ran before, and a repro line can name it.
"""

from __future__ import annotations

import random
import sys

DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1  # numpy's global generator takes no larger seed


def seed_all(seed: int) -> None:
    """Seed torch (CPU, and every CUDA device on a CUDA build), Python's `random` and numpy's global generator."""
    import torch

    if torch.backends.cuda.is_built():
        torch.manual_seed(seed)
    else:  # torch.manual_seed would also queue a CUDA seeding, with its stack, per call
        torch.default_generator.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)
