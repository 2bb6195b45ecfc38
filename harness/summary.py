"""The per-tier results table printed at the end of a run (and in CI job summaries)."""

from __future__ import annotations

import os

import pytest

from harness import devices, tiers

_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def _device_label(name: str) -> str:
    tier = tiers.TIERS[name]
    if tier.min_gpus == 0:
        return "cpu"
    if devices.fake_gpu_count():
        return f"{devices.gpu_count()} fake GPUs (cpu)"
    if tiers.unsupported_reason(name):
        return "-"
    import torch

    return f"{devices.gpu_count()}x {torch.cuda.get_device_name(0)}"


class TierSummary:
    """Collects one outcome per test id (worst phase wins) and prints the table."""

    def __init__(self, config: pytest.Config, selected: list[str] | None) -> None:
        self.config = config
        self.selected = selected
        self.outcomes: dict[str, tuple[str, str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = dict(report.user_properties).get("harness_tier")
        if name is not None:
            previous = self.outcomes.get(report.nodeid, (name, "passed"))[1]
            self.outcomes[report.nodeid] = (name, max(previous, report.outcome, key=_RANK.__getitem__))

    def rows(self) -> list[list[str]]:
        selected = self.selected
        rows = []
        for name in tiers.TIERS:
            counts = dict.fromkeys(_RANK, 0)
            for tier_name, outcome in self.outcomes.values():
                if tier_name == name:
                    counts[outcome] += 1
            note = ""
            if selected is not None and name not in selected:
                note = "not selected (--tier)"
            elif reason := tiers.unsupported_reason(name):
                note = f"not run here: {reason}"
            rows.append(
                [name, _device_label(name), tiers.backend_for(name), *(str(counts[k]) for k in _RANK), note]
            )
        return rows

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if hasattr(self.config, "workerinput"):
            return
        header = ["tier", "device", "backend", "passed", "skipped", "failed", "note"]
        rows = self.rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        terminalreporter.section("harness tiers", sep="-")
        for row in [header, *rows]:
            terminalreporter.write_line(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            with open(step_summary, "a") as out:
                out.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
                out.writelines("| " + " | ".join(row) + " |\n" for row in rows)
