"""The per-tier results table printed at the end of a run (and in CI job summaries),
with flaky tests, failures' repro lines and the quarantine listed under it."""

from __future__ import annotations

import os

import pytest

from harness import devices, tiers
from harness.quarantine import Quarantine
from harness.reporting import FLAKY, POOLED, QUARANTINED, REPRO, TORCH_POOL

_RANK = {"passed": 0, "flaky": 1, "skipped": 2, "failed": 3}
FLAKY_EXIT = 7  # pytest-rerunfailures' exit code for --fail-on-flaky
STREAKS_CACHE = "harness/quarantine-streaks"


def _device_label(name: str) -> str:
    tier = tiers.TIERS[name]
    if tier.min_gpus == 0:
        return "cpu"
    if devices.fake_gpu_count():
        return f"{devices.gpu_count()} fake GPUs (cpu)"
    if tiers.unsupported_reason(name):
        return "-"
    try:
        import torch

        return f"{devices.gpu_count()}x {torch.cuda.get_device_name(0)}"
    except Exception:
        return f"{devices.gpu_count()} GPU(s)"


class TierSummary:
    """Collects one outcome per test id (worst phase of the last attempt wins) and prints the table."""

    def __init__(self, config: pytest.Config, selected: list[str] | None, quarantine: Quarantine) -> None:
        self.config = config
        self.selected = selected
        self.quarantine = quarantine
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.rerun: set[str] = set()
        self.repros: dict[str, str] = {}
        self.quarantined: dict[str, tuple[str, bool]] = {}  # test id -> (entry id, passed)
        self.torch_pool: dict[str, str] = {}  # test id -> "pooled" or why it ran on torch's spawn path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if report.outcome == "rerun":
            self.rerun.add(report.nodeid)
            self.outcomes.pop(report.nodeid, None)
            return
        if REPRO in properties and report.failed:
            self.repros[report.nodeid] = properties[REPRO]
        if TORCH_POOL in properties:
            self.torch_pool[report.nodeid] = properties[TORCH_POOL]
        if QUARANTINED in properties and report.when == "call":
            self.quarantined[report.nodeid] = (properties[QUARANTINED], report.passed)
        name = properties.get("harness_tier")
        if name is None:
            return
        outcome = report.outcome
        if outcome == "passed" and (FLAKY in properties or report.nodeid in self.rerun):
            outcome = "flaky"
        previous = self.outcomes.get(report.nodeid, (name, "passed"))[1]
        self.outcomes[report.nodeid] = (name, max(previous, outcome, key=_RANK.__getitem__))

    def flaky(self) -> list[str]:
        return sorted(n for n, (_, outcome) in self.outcomes.items() if outcome == "flaky")

    def rows(self) -> list[list[str]]:
        rows = []
        for name in tiers.TIERS:
            counts = dict.fromkeys(_RANK, 0)
            for tier_name, outcome in self.outcomes.values():
                if tier_name == name:
                    counts[outcome] += 1
            note = ""
            if self.selected is not None and name not in self.selected:
                note = "not selected (--tier)"
            elif reason := tiers.unsupported_reason(name):
                note = f"not run here: {reason}"
            rows.append(
                [name, _device_label(name), tiers.backend_for(name), *(str(counts[k]) for k in _RANK), note]
            )
        return rows

    def _fail_on_flaky(self) -> bool:
        """pytest-rerunfailures (a dependency) owns the option; only its reruns make a test flaky."""
        return self.config.getoption("fail_on_flaky")

    def notes(self) -> list[str]:
        """Lines under the table: flaky tests, the quarantine, failures' repro lines."""
        lines = []
        flaky = self.flaky()
        if flaky:
            verdict = (
                "they FAIL this run (--fail-on-flaky)"
                if self._fail_on_flaky()
                else ("they do NOT fail this run (pass --fail-on-flaky to make them)")
            )
            lines.append(f"FLAKY: {len(flaky)} test(s) failed, then passed on a rerun; {verdict}:")
            lines += [f"  {nodeid}" for nodeid in flaky]
        ready = self._update_streaks()
        for nodeid, (entry, passed) in sorted(self.quarantined.items()):
            state = "passed" if passed else "failed (not counted)"
            lines.append(f"QUARANTINED: {nodeid} {state} (entry {entry!r})")
        lines += [
            f"QUARANTINE: {entry!r} passed {self.quarantine.ready_after} runs in a row: ready to remove"
            for entry in ready
        ]
        lines += self._torch_pool_line()
        for nodeid, line in sorted(self.repros.items()):
            lines.append(f"REPRO {nodeid}: {line}")
        return lines

    def _torch_pool_line(self) -> list[str]:
        """How many tests of torch's multi-process classes ran pooled, and why the others did not."""
        if not self.torch_pool:
            return []
        ways = list(self.torch_pool.values())
        reasons = sorted({w for w in ways if w != POOLED})
        fell_back = len(ways) - ways.count(POOLED)
        line = f"TORCH TESTS: {ways.count(POOLED)} pooled, {fell_back} on torch's own spawn path"
        if reasons:
            line += ": " + "; ".join(f"{reason} ({ways.count(reason)})" for reason in reasons)
        return [line]

    def _update_streaks(self) -> list[str]:
        """Count, across runs (pytest's cache), how many runs in a row each entry's tests passed."""
        cache = getattr(self.config, "cache", None)
        if cache is None or not self.quarantined:
            return []
        streaks = cache.get(STREAKS_CACHE, {})
        results: dict[str, bool] = {}
        for entry, passed in self.quarantined.values():
            results[entry] = results.get(entry, True) and passed
        for entry, passed in results.items():
            streaks[entry] = streaks.get(entry, 0) + 1 if passed else 0
        cache.set(STREAKS_CACHE, streaks)
        return sorted(e for e, n in streaks.items() if n >= self.quarantine.ready_after and e in results)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if (
            not hasattr(self.config, "workerinput")
            and exitstatus == 0
            and self.flaky()
            and self._fail_on_flaky()
        ):
            session.exitstatus = FLAKY_EXIT

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if hasattr(self.config, "workerinput"):
            return
        header = ["tier", "device", "backend", *_RANK, "note"]
        rows = self.rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        terminalreporter.section("harness tiers", sep="-")
        for row in [header, *rows]:
            terminalreporter.write_line(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        notes = self.notes()
        for line in notes:
            terminalreporter.write_line(
                line, yellow=line.startswith(("FLAKY", "QUARANTINE")), bold=line.startswith("FLAKY")
            )
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            with open(step_summary, "a") as out:
                out.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
                out.writelines("| " + " | ".join(row) + " |\n" for row in rows)
                out.writelines(f"\n{_markdown(line)}\n" for line in notes)


def _markdown(line: str) -> str:
    head, _, rest = line.partition(": ")
    if head.startswith("REPRO"):
        return f"**{head}**:\n```\n{rest}\n```"
    return f"**{head}**: {rest}" if head.isupper() else f"- `{line.strip()}`"
