"""GPU tests in order of need and duration, handed to xdist workers one at a time.

A run of GPU tiers only under xdist (`make test-gpu`) starts its largest tests
first: each worker sorts the collection by GPU count, then recorded duration,
both descending (all workers sort alike, so their collections still match),
and the controller's `NeedFirstScheduling` hands the tests out in that order,
one to whichever worker finished, so the tests start in that order. Devices
are then packed by the leases: a waiting large lease gets the devices that free
up (`lease_queue`), smaller tests fill the rest.

Why on xdist's scheduling hook and not a queue the workers pull from: xdist
already gives each worker its tests, reports and crash recovery; a worker may
only run the tests the controller sent it. The order is the only thing it lacks,
and the timing of each start belongs to the leases, which alone see every
runner on the host.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import lease_queue, tiers
from harness.ci import durations

NEED = "need"
XDIST = "xdist"
SCHEDULES = (NEED, XDIST)
# What a test without a recorded duration is taken to last when nothing is recorded at all.
UNRECORDED_S = 1.0
# How long a worker's first lease request waits for the other workers' first requests.
FIRST_LEASE_SETTLE_S = 0.5


def active(config: pytest.Config, schedule: str, selected: list[str] | None) -> bool:
    """True in an xdist run (controller or worker) of GPU tiers only with `--gpu-schedule need`."""
    if schedule != NEED or not selected or not all(tiers.TIERS[name].min_gpus for name in selected):
        return False
    return hasattr(config, "workerinput") or config.getoption("dist", "no") != "no"


def need_first(
    items: Sequence[pytest.Item], need: Callable[[pytest.Item], int], seconds: dict[str, float]
) -> list[pytest.Item]:
    """Most GPUs first, then longest first; an unrecorded test counts as the median recorded one."""
    known = [seconds[item.nodeid] for item in items if item.nodeid in seconds]
    default = statistics.median(known) if known else UNRECORDED_S
    return sorted(items, key=lambda item: (-need(item), -seconds.get(item.nodeid, default)))


def gpus_of(item: pytest.Item) -> int:
    name = tiers.tier_name(item)
    return 0 if name is None else tiers.gpus_needed(item, name)


class NeedFirst:
    """The plugin of a scheduled run: the order in each worker, the scheduler in the controller."""

    def __init__(self, durations_path: Path) -> None:
        self.durations_path = durations_path

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Import torch in a worker before its first lease, as the `tier` fixture would inside it:
        seconds of holding up to 8 GPUs idle on a loaded host, counted as start-up instead.
        The first lease lets the other workers' first requests line up, largest first."""
        if hasattr(session.config, "workerinput"):
            import harness.env  # noqa: F401

            lease_queue.settle_next_request(FIRST_LEASE_SETTLE_S)

    @pytest.hookimpl(trylast=True)  # after every hook that deselects
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        try:
            recorded = durations.load(self.durations_path)
        except ValueError as error:
            raise pytest.UsageError(f"--schedule-durations: {error}") from None
        items[:] = need_first(items, gpus_of, recorded)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> NeedFirstScheduling:
        from xdist.workermanage import parse_tx_spec_config  # how xdist's own schedulers count workers

        return NeedFirstScheduling(len(parse_tx_spec_config(config)), log)


class NeedFirstScheduling:
    """xdist scheduler: tests go out in collection order, one to each worker that finished one.

    An xdist worker starts a test only once it holds the next (pytest needs the
    next item to tear fixtures down), so each worker holds two: the one it runs
    and the next. When nothing is left to send, a worker is told to shut down,
    which starts its last one. Nothing goes out before every worker collected,
    so the largest tests land on different workers.
    """

    def __init__(self, workers: int, log: Any) -> None:
        self.workers = workers
        self.log = log
        self.collections = 0
        self.collection: list[str] | None = None
        self.pending: deque[int] = deque()
        self.sent: dict[Any, list[int]] = {}  # worker -> indices it holds, the running one first
        self.mismatched: set[Any] = set()

    @property
    def nodes(self) -> list[Any]:
        return list(self.sent)

    @property
    def collection_is_completed(self) -> bool:
        return self.collections >= self.workers

    @property
    def tests_finished(self) -> bool:
        return (
            self.collection_is_completed
            and not self.pending
            and all(len(held) <= 1 for held in self.sent.values())
        )

    @property
    def has_pending(self) -> bool:
        return bool(self.pending) or any(self.sent.values())

    def add_node(self, node: Any) -> None:
        self.sent[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        self.collections += 1
        if self.collection is None:
            self.collection = list(collection)
            self.pending.extend(range(len(collection)))
        elif list(collection) != self.collection:
            self.log(f"{node.gateway.id} collected other tests than the first worker; it gets none")
            self.mismatched.add(node)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        self.sent[node].remove(item_index)
        self._top_up(node)

    def mark_test_pending(self, item: str) -> None:
        assert self.collection is not None
        self.pending.appendleft(self.collection.index(item))
        for node in self.nodes:
            self._top_up(node)

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        raise NotImplementedError("NeedFirstScheduling never steals tests back")

    def remove_node(self, node: Any) -> str | None:
        """A worker crashed or ended: what it held goes back to the front, its running test is named."""
        held = self.sent.pop(node)
        self.mismatched.discard(node)
        if not held:
            return None
        assert self.collection is not None
        self.pending.extendleft(reversed(held[1:]))
        for other in self.nodes:
            self._top_up(other)
        return self.collection[held[0]]

    def schedule(self) -> None:
        """Two rounds, one test each, so the largest tests are spread over the workers."""
        for _ in range(2):
            for node in self.nodes:
                self._top_up(node, limit=1)

    def _top_up(self, node: Any, limit: int = 2) -> None:
        if node.shutting_down or node in self.mismatched or not self.collection_is_completed:
            return
        held = self.sent[node]
        if not self.pending:
            node.shutdown()
            return
        while self.pending and len(held) < 2 and limit:
            index = self.pending.popleft()
            held.append(index)
            node.send_runtest_some([index])
            limit -= 1
