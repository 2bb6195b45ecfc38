"""Per-test reporting hooks: quarantined tests run as non-strict xfail, every failure
carries its repro line (terminal and JUnit), a pass on a rerun is marked flaky."""

from __future__ import annotations

import pytest

from harness import repro
from harness.quarantine import Quarantine
from harness.tiers import tier_name

QUARANTINED = "quarantined"
FLAKY = "flaky"
REPRO = "repro"
# On each report of a test of torch's multi-process classes: "pooled", or why it ran on torch's spawn path.
TORCH_POOL = "harness_torch_pool"
POOLED = "pooled"


def _add_property(item: pytest.Item, name: str, value: str) -> None:
    """On the item, so the teardown report that JUnit reads carries it."""
    if (name, value) not in item.user_properties:
        item.user_properties.append((name, value))


class Reporting:
    def __init__(
        self, quarantine: Quarantine, seed: int, dist_timeout_s: float, default_timeout_s: float
    ) -> None:
        self.quarantine = quarantine
        self.seed = seed
        self.dist_timeout_s = dist_timeout_s
        self.default_timeout_s = default_timeout_s

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            entry = self.quarantine.find(item.nodeid)
            if entry is not None:
                item.add_marker(
                    pytest.mark.xfail(reason=f"quarantined: {entry.reason} ({entry.link})", strict=False)
                )
                _add_property(item, QUARANTINED, entry.id)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
        report = yield
        if report.failed:
            line = repro.line(item, tier_name(item), self.seed, self.dist_timeout_s, self.default_timeout_s)
            report.sections.append((REPRO, line))
            report.user_properties.append((REPRO, line))
            _add_property(item, REPRO, line)
        attempt = getattr(item, "execution_count", 1)
        if report.when == "call" and report.passed and attempt > 1:
            _add_property(item, FLAKY, f"passed on attempt {attempt}")
        return report
