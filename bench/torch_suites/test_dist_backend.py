"""torch's shipped distributed suite, as torch's own spawn runner builds it: the tests are
imported from the installed torch (`DistributedTest._DistTestBase`), nothing is copied.

BACKEND and WORLD_SIZE come from the environment (gloo and 2 unless set), as torch's
runner passes them; `bench/torch_suites_bench.py` runs this file with and without
`--pool-torch-tests`.
"""

import os

os.environ.setdefault("BACKEND", "gloo")
os.environ.setdefault("WORLD_SIZE", "2")

from torch.testing._internal.distributed.distributed_test import (
    DistributedTest,
    TestDistBackend,
)


class TestDistBackendWithSpawn(TestDistBackend, DistributedTest._DistTestBase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()
