"""The mutation score per package from mutmut's results, equivalent mutants set apart.

`make mutate` runs `mutmut run` (see `[tool.mutmut]` in pyproject.toml), then
this: it reads the verdict mutmut recorded for every mutant under `mutants/`,
sets aside the equivalent mutants listed in `bench/equivalent_mutants.toml`
(each with its reason), and prints per package the score (killed / mutants
with covering tests), the survivors and the mutants no test covers. With
`GITHUB_STEP_SUMMARY` set the same goes into the job summary. It exits 1 when
a package is under its target, or when an entry of that file is stale (its
mutant is gone or now killed), so the list stays true to the code, and
when a selected mutant was never run (an interrupted run, or a module no CI
shard names).

    .venv/bin/python bench/mutation_score.py [--mutants DIR ...] [--select PATTERN ...]
        [--equivalent bench/equivalent_mutants.toml]

Several `--mutants` folders (the CI shards' results) are merged: a mutant's
verdict is the one a shard ran it to. `--select` takes mutmut's name patterns
(`ac.*`, `harness.ranks.*`) and scores only those mutants.

The same file lists, as `[[killed_outside]]`, mutants that a test of the plain
suite kills but mutmut cannot show it: the test is one mutmut leaves out (a
compiled graph), or mutmut's own wrapper frames hide what it checks (a warning's
stack level). Each names that test and was checked by hand (apply `mutmut show
<name>`, run the test, see it fail); they count as killed, in their own column.

A whole run takes many hours on a small machine. `--sample N` prints the names of
N mutants per package, drawn at random (`--seed`) from those mutmut generated;
running and scoring just those estimates the score in a fraction of the time:

    names=$(.venv/bin/python bench/mutation_score.py --sample 100)
    .venv/bin/mutmut run $names && .venv/bin/python bench/mutation_score.py --select $names
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from mutmut.stats import status_by_exit_code

# The lowest score each package may have (issue 13): mutants killed over mutants with tests.
TARGETS = {"ac": 90.0, "ackit": 80.0, "harness": 80.0}
KILLED_OUTSIDE = "killed outside mutmut"
# the tests noticed the mutant, one way or another
DETECTED = ("killed", "timeout", "segfault", KILLED_OUTSIDE)
NOT_RUN = "not checked"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Package:
    statuses: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    equivalent: int = 0

    @property
    def tested(self) -> int:
        return sum(self.statuses.values()) - self.statuses["no tests"] - self.statuses[NOT_RUN]

    @property
    def detected(self) -> int:
        return sum(self.statuses[status] for status in DETECTED)

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.tested if self.tested else 100.0


def package_of(name: str) -> str:
    return name.split(".", 1)[0]


def selected(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def left_out() -> list[str]:
    """`[tool.mutmut] do_not_mutate`: mutmut keeps the results of a file that was mutated
    before it was listed there, so they are skipped here rather than trusted."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["do_not_mutate"]


def verdicts(folders: list[Path], select: list[str], skip: list[str] | None = None) -> dict[str, str]:
    """Every selected mutant's status, by name, from mutmut's per-file `.meta` records."""
    skip = left_out() if skip is None else skip
    found: dict[str, str] = {}
    for folder in folders:
        for meta in sorted(folder.rglob("*.py.meta")):
            source = meta.relative_to(folder).with_suffix("")
            if any(source.match(pattern) for pattern in skip):
                continue
            for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if not selected(name, select):
                    continue
                status = status_by_exit_code[exit_code]
                if found.get(name, NOT_RUN) == NOT_RUN:
                    found[name] = status
    if not found:
        where = ", ".join(f"{folder}/" for folder in folders)
        raise SystemExit(
            f"no mutmut results for {select or 'any mutant'} under {where}: run `make mutate` first"
        )
    return found


def load_equivalent(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Equivalent mutants (name -> why behaviour does not change) and mutants killed
    outside mutmut (name -> the test that kills them)."""
    tables = tomllib.loads(path.read_text()) if path.exists() else {}
    needs = {"mutant": ("name", "reason"), "killed_outside": ("name", "test", "reason")}
    for table, keys in needs.items():
        incomplete = [entry for entry in tables.get(table, []) if not all(entry.get(key) for key in keys)]
        if incomplete:
            raise SystemExit(f"{path}: every [[{table}]] needs {', '.join(keys)}; incomplete: {incomplete}")
    equivalent = {entry["name"]: entry["reason"] for entry in tables.get("mutant", [])}
    return equivalent, {entry["name"]: entry["test"] for entry in tables.get("killed_outside", [])}


def tally(found: dict[str, str], equivalent: dict[str, str], outside: dict[str, str]) -> dict[str, Package]:
    packages: dict[str, Package] = {}
    for name, status in sorted(found.items()):
        package = packages.setdefault(package_of(name), Package())
        if name in equivalent and status == "survived":
            package.equivalent += 1
            continue
        if name in outside and status == "survived":
            status = KILLED_OUTSIDE
        package.statuses[status] += 1
        if status == "survived":
            package.survivors.append(name)
        elif status == "no tests":
            package.untested.append(name)
        elif status == NOT_RUN:
            package.not_run.append(name)
    return packages


def report(packages: dict[str, Package], stale: list[str]) -> tuple[str, bool]:
    """The markdown report, and whether every package meets its target."""
    lines = [
        "| package | mutants | killed | killed outside mutmut | timeout | survived | equivalent | no tests | not run "
        "| score | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = not stale
    for name, package in sorted(packages.items()):
        target = TARGETS.get(name, 0.0)
        ok &= package.score >= target and not package.not_run
        total = sum(package.statuses.values()) + package.equivalent
        lines.append(
            f"| {name} | {total} | {package.statuses['killed']} | {package.statuses[KILLED_OUTSIDE]} | "
            f"{package.statuses['timeout']} | "
            f"{package.statuses['survived']} | {package.equivalent} | {package.statuses['no tests']} | "
            f"{len(package.not_run)} | {package.score:.1f}% | {target:.0f}% |"
        )
    for name, package in sorted(packages.items()):
        if package.survivors:
            lines += ["", f"Survivors in `{name}` (`mutmut show <name>` prints the change):", ""]
            lines += [f"- `{mutant}`" for mutant in package.survivors]
        if package.untested:
            lines += ["", f"No test covers these mutants of `{name}` (left out of the score):", ""]
            lines += [f"- `{mutant}`" for mutant in package.untested]
        if package.not_run:
            modules = sorted({mutant.split(".x", 1)[0] for mutant in package.not_run})
            lines += [
                "",
                f"Never run ({len(package.not_run)} mutants of `{name}`, the score is incomplete) in:",
                "",
            ]
            lines += [f"- `{module}`" for module in modules]
    if stale:
        lines += ["", "Stale entries in bench/equivalent_mutants.toml (gone, or no longer surviving):", ""]
        lines += [f"- `{mutant}`" for mutant in stale]
    return "\n".join(lines) + "\n", ok


def sample(found: dict[str, str], per_package: int, seed: int) -> list[str]:
    """`per_package` mutant names of each package, the same ones for the same seed and mutants."""
    rng, picked = random.Random(seed), []
    for package in sorted({package_of(name) for name in found}):
        names = sorted(name for name in found if package_of(name) == package)
        picked += sorted(rng.sample(names, min(per_package, len(names))))
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mutants", type=Path, action="append", help="mutmut's folder (repeat to merge shards)"
    )
    parser.add_argument("--select", nargs="*", default=[], help="mutmut name patterns to score, e.g. 'ac.*'")
    parser.add_argument("--equivalent", type=Path, default=ROOT / "bench" / "equivalent_mutants.toml")
    parser.add_argument(
        "--sample", type=int, metavar="N", help="print N random mutant names per package, score nothing"
    )
    parser.add_argument("--seed", type=int, default=0, help="the --sample draw")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be a positive count of mutants per package, got {args.sample}")
    found = verdicts(args.mutants or [ROOT / "mutants"], args.select)
    if args.sample:
        print("\n".join(sample(found, args.sample, args.seed)))
        return 0
    equivalent, outside = load_equivalent(args.equivalent)
    listed = [*equivalent, *outside]
    stale = sorted(n for n in listed if selected(n, args.select) and found.get(n) != "survived")
    text, ok = report(tally(found, equivalent, outside), stale)
    print(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as out:
            out.write("## Mutation score\n\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
