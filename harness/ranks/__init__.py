"""Multi-rank execution of `@pytest.mark.world_size(N)` tests.

One concern per module: `rendezvous` (store and torchrun env), `worker` (the
rank process), `calls` (shipping a test call into a rank), `results` (one
verdict from N rank reports), `pool` (reusable rank pools) and `plugin` (the
pytest hooks, loaded through the `harness_ranks` pytest11 entry point).
"""
