"""Multi-rank execution of `@pytest.mark.world_size(N)` tests.

One concern per module: `rendezvous` (store and torchrun env), `worker` (the
rank process), `calls` (shipping a test call into a rank), `state` (a clean
start per test), `children` (processes a test leaves), `results` (one verdict
from N rank reports), `logs` (rank log files: read, echoed, emptied), `pool`
(reusable rank pools) and `plugin` (the pytest hooks, registered by
`harness.plugin` when the harness is enabled).
"""
