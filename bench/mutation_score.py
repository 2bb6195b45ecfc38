"""The mutation score per package from mutmut's results, equivalent mutants set apart.

`make mutate` runs `mutmut run` (see `[tool.mutmut]` in pyproject.toml), then
this: it reads the verdict mutmut recorded for every mutant under `mutants/`,
sets aside the equivalent mutants listed in `bench/equivalent_mutants.toml`
(each with its reason), and prints per package the score (killed / mutants
with covering tests), the survivors and the mutants no test covers. With
`GITHUB_STEP_SUMMARY` set the same goes into the job summary. It exits 1 when
a package is under its target, or when an equivalent-mutant entry is stale
(its mutant is gone or now killed), so the list stays true to the code.

    .venv/bin/python bench/mutation_score.py [--mutants mutants] [--equivalent bench/equivalent_mutants.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from mutmut.stats import status_by_exit_code

# The lowest score each package may have (issue 13): mutants killed over mutants with tests.
TARGETS = {"ac": 90.0, "harness": 80.0}
DETECTED = ("killed", "timeout", "segfault")  # the tests noticed the mutant, one way or another
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Package:
    statuses: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)
    equivalent: int = 0

    @property
    def tested(self) -> int:
        return sum(self.statuses.values()) - self.statuses["no tests"]

    @property
    def detected(self) -> int:
        return sum(self.statuses[status] for status in DETECTED)

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.tested if self.tested else 100.0


def verdicts(mutants: Path) -> dict[str, str]:
    """Every mutant's status, by mutant name, from mutmut's per-file `.meta` records."""
    found = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[exit_code]
    if not found:
        raise SystemExit(f"no mutmut results under {mutants}/: run `mutmut run` (make mutate) first")
    return found


def load_equivalent(path: Path) -> dict[str, str]:
    """name -> why no test can kill it (behaviour does not change)."""
    entries = tomllib.loads(path.read_text()).get("mutant", []) if path.exists() else []
    missing = [entry for entry in entries if not entry.get("name") or not entry.get("reason")]
    if missing:
        raise SystemExit(f"{path}: every [[mutant]] needs a name and a reason; incomplete: {missing}")
    return {entry["name"]: entry["reason"] for entry in entries}


def tally(found: dict[str, str], equivalent: dict[str, str]) -> dict[str, Package]:
    packages: dict[str, Package] = {}
    for name, status in sorted(found.items()):
        package = packages.setdefault(name.split(".", 1)[0], Package())
        if name in equivalent and status == "survived":
            package.equivalent += 1
            continue
        package.statuses[status] += 1
        if status == "survived":
            package.survivors.append(name)
        elif status == "no tests":
            package.untested.append(name)
    return packages


def report(packages: dict[str, Package], stale: list[str]) -> tuple[str, bool]:
    """The markdown report, and whether every package meets its target."""
    lines = [
        "| package | mutants | killed | timeout | survived | equivalent | no tests | score | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ok = not stale
    for name, package in sorted(packages.items()):
        target = TARGETS.get(name, 0.0)
        ok &= package.score >= target
        total = sum(package.statuses.values()) + package.equivalent
        lines.append(
            f"| {name} | {total} | {package.statuses['killed']} | {package.statuses['timeout']} | "
            f"{package.statuses['survived']} | {package.equivalent} | {package.statuses['no tests']} | "
            f"{package.score:.1f}% | {target:.0f}% |"
        )
    for name, package in sorted(packages.items()):
        if package.survivors:
            lines += ["", f"Survivors in `{name}` (`mutmut show <name>` prints the change):", ""]
            lines += [f"- `{mutant}`" for mutant in package.survivors]
        if package.untested:
            lines += ["", f"No test covers these mutants of `{name}` (left out of the score):", ""]
            lines += [f"- `{mutant}`" for mutant in package.untested]
    if stale:
        lines += ["", "Stale entries in the equivalent-mutant list (gone, or no longer surviving):", ""]
        lines += [f"- `{mutant}`" for mutant in stale]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--equivalent", type=Path, default=ROOT / "bench" / "equivalent_mutants.toml")
    args = parser.parse_args(argv)
    found = verdicts(args.mutants)
    equivalent = load_equivalent(args.equivalent)
    stale = sorted(name for name in equivalent if found.get(name) != "survived")
    text, ok = report(tally(found, equivalent), stale)
    print(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as out:
            out.write("## Mutation score\n\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
