"""`make mutate`: what mutmut mutates, how the score is counted, and when it runs in CI."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import tomllib

from tests.ci.test_workflows import ROOT, load, makefile_targets

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

# The parts of the harness that run in the pytest process (issue 13): each must be mutated.
IN_PROCESS = ("tiers", "devices", "plugin", "summary", "measure", "matrix", "sweep", "report")
IN_PROCESS_RANKS = ("results", "calls", "pool", "plugin")


def _score_module():
    spec = importlib.util.spec_from_file_location("mutation_score", ROOT / "bench" / "mutation_score.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


score = _score_module()


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def _mutated(path: str) -> bool:
    inside = any(path.startswith(source) for source in _config()["source_paths"])
    return inside and not any(Path(path).match(pattern) for pattern in score.left_out())


def test_ac_and_the_in_process_harness_are_mutated_and_rank_processes_are_not():
    assert all(_mutated(f"ac/{p.relative_to(ROOT / 'ac')}") for p in (ROOT / "ac").rglob("*.py"))
    assert all(_mutated(f"harness/{name}.py") for name in IN_PROCESS)
    assert all(_mutated(f"harness/ranks/{name}.py") for name in IN_PROCESS_RANKS)
    assert not _mutated("harness/ranks/worker.py")
    for pattern in score.left_out():
        assert list(ROOT.glob(pattern)), f"do_not_mutate names {pattern!r}, which matches no file"


def _mutants(tmp_path: Path, verdicts: dict[str, int]) -> Path:
    """A mutants/ folder as mutmut leaves it: one `.meta` per source file."""
    by_file: dict[str, dict[str, int]] = {}
    for name, code in verdicts.items():
        by_file.setdefault(name.split(".x")[0].replace(".", "/") + ".py.meta", {})[name] = code
    for path, codes in by_file.items():
        meta = tmp_path / "mutants" / path
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path / "mutants"


def _equivalent(tmp_path: Path, entries: dict[str, str]) -> Path:
    path = tmp_path / "equivalent.toml"
    path.write_text("".join(f'[[mutant]]\nname = "{n}"\nreason = "{r}"\n\n' for n, r in entries.items()))
    return path


KILLED, SURVIVED, NO_TESTS, TIMEOUT = 1, 0, 33, 36


def test_score_is_detected_over_tested_with_equivalents_set_apart(tmp_path, capsys):
    verdicts = {f"ac.config.x_f__mutmut_{i}": KILLED for i in range(17)}
    verdicts |= {"ac.config.x_f__mutmut_17": TIMEOUT, "ac.config.x_f__mutmut_18": SURVIVED}
    verdicts |= {"ac.config.x_f__mutmut_19": SURVIVED, "ac.config.x_g__mutmut_1": NO_TESTS}
    verdicts |= {f"harness.tiers.x_h__mutmut_{i}": KILLED for i in range(4)}
    verdicts |= {"harness.tiers.x_h__mutmut_4": SURVIVED}
    equivalent = _equivalent(tmp_path, {"ac.config.x_f__mutmut_19": "same result"})
    code = score.main(["--mutants", str(_mutants(tmp_path, verdicts)), "--equivalent", str(equivalent)])
    out = capsys.readouterr().out
    # ac: 18 of 19 tested (the equivalent one and the untested one left out) = 94.7%.
    assert "| ac | 21 | 17 | 0 | 1 | 1 | 1 | 1 | 0 | 94.7% | 90% |" in out
    assert "| harness | 5 | 4 | 0 | 0 | 1 | 0 | 0 | 0 | 80.0% | 80% |" in out
    assert "- `ac.config.x_f__mutmut_18`" in out and "- `ac.config.x_g__mutmut_1`" in out
    assert code == 0


def test_a_package_under_its_target_fails_the_run(tmp_path, capsys):
    verdicts = {"harness.tiers.x_h__mutmut_1": KILLED, "harness.tiers.x_h__mutmut_2": SURVIVED}
    assert score.main(["--mutants", str(_mutants(tmp_path, verdicts)), "--equivalent", "none.toml"]) == 1
    assert "| harness | 2 | 1 | 0 | 0 | 1 | 0 | 0 | 0 | 50.0% | 80% |" in capsys.readouterr().out


def test_a_mutant_killed_outside_mutmut_counts_as_killed_naming_its_test(tmp_path, capsys):
    verdicts = {"ac.modes.x_f__mutmut_1": SURVIVED, "ac.modes.x_f__mutmut_2": KILLED}
    listed = tmp_path / "listed.toml"
    listed.write_text(
        '[[killed_outside]]\nname = "ac.modes.x_f__mutmut_1"\ntest = "t.py::test_w"\nreason = "frames"\n'
    )
    assert score.main(["--mutants", str(_mutants(tmp_path, verdicts)), "--equivalent", str(listed)]) == 0
    assert "| ac | 2 | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 100.0% | 90% |" in capsys.readouterr().out
    listed.write_text('[[killed_outside]]\nname = "ac.modes.x_f__mutmut_1"\nreason = "frames"\n')
    with pytest.raises(SystemExit, match=r"every \[\[killed_outside\]\] needs name, test, reason"):
        score.main(["--mutants", str(_mutants(tmp_path, verdicts)), "--equivalent", str(listed)])


def test_stale_equivalent_entries_fail_the_run(tmp_path, capsys):
    verdicts = {"ac.config.x_f__mutmut_1": KILLED}
    equivalent = _equivalent(tmp_path, {"ac.config.x_f__mutmut_1": "was", "ac.gone.x_f__mutmut_1": "gone"})
    assert score.main(["--mutants", str(_mutants(tmp_path, verdicts)), "--equivalent", str(equivalent)]) == 1
    out = capsys.readouterr().out
    assert "- `ac.config.x_f__mutmut_1`" in out and "- `ac.gone.x_f__mutmut_1`" in out


def test_checked_in_equivalents_each_give_a_reason():
    tables = tomllib.loads((ROOT / "bench" / "equivalent_mutants.toml").read_text())
    assert all(entry["name"] and len(entry["reason"]) > 10 for entry in tables.get("mutant", []))
    for entry in tables.get("killed_outside", []):
        path, _, name = entry["test"].partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{entry['name']} names a test that is gone"


def test_shards_merge_and_a_mutant_no_shard_ran_fails_the_score(tmp_path, capsys):
    first = _mutants(tmp_path / "a", {"ac.config.x_f__mutmut_1": KILLED, "harness.tiers.x_h__mutmut_1": None})
    second = _mutants(
        tmp_path / "b", {"ac.config.x_f__mutmut_1": None, "harness.tiers.x_h__mutmut_1": KILLED}
    )
    merged = ["--mutants", str(first), "--mutants", str(second), "--equivalent", "none.toml"]
    assert score.main(merged) == 0
    assert "| harness | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 100.0% | 80% |" in capsys.readouterr().out
    assert score.main(["--mutants", str(first), "--equivalent", "none.toml"]) == 1
    assert "- `harness.tiers`" in capsys.readouterr().out


def test_select_scores_only_the_named_mutants_and_their_equivalents(tmp_path, capsys):
    verdicts = {"ac.config.x_f__mutmut_1": KILLED, "harness.tiers.x_h__mutmut_1": SURVIVED}
    equivalent = _equivalent(tmp_path, {"harness.tiers.x_h__mutmut_2": "outside the selection"})
    args = [
        "--mutants",
        str(_mutants(tmp_path, verdicts)),
        "--equivalent",
        str(equivalent),
        "--select",
        "ac.*",
    ]
    assert score.main(args) == 0
    assert "| harness" not in capsys.readouterr().out


def test_sample_draws_the_same_names_per_package_for_the_same_seed(tmp_path, capsys):
    verdicts = {f"ac.config.x_f__mutmut_{i}": None for i in range(50)}
    verdicts |= {f"harness.tiers.x_h__mutmut_{i}": None for i in range(3)}
    mutants = str(_mutants(tmp_path, verdicts))
    draws = []
    for seed in (0, 0, 1):
        assert score.main(["--mutants", mutants, "--sample", "10", "--seed", str(seed)]) == 0
        draws.append(capsys.readouterr().out.split())
    assert draws[0] == draws[1] != draws[2]
    assert sum(name.startswith("ac.") for name in draws[0]) == 10 and len(set(draws[0])) == 13
    with pytest.raises(SystemExit):
        score.main(["--mutants", mutants, "--sample", "0"])
    assert "--sample must be a positive count" in capsys.readouterr().err


def _shards() -> list[list[str]]:
    [shard_job] = [job for job in load("mutate.yml")["jobs"].values() if "strategy" in job]
    return [entry.split() for entry in shard_job["strategy"]["matrix"]["mutants"]]


def test_mutation_runs_weekly_and_on_demand_in_shards_never_on_pull_requests():
    workflow = load("mutate.yml")
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch"}
    assert "mutate" in makefile_targets()
    shard_job = next(job for job in workflow["jobs"].values() if "strategy" in job)
    [mutate] = [step for step in shard_job["steps"] if step.get("run", "").strip() == "make mutate"]
    assert mutate["env"]["MUTANTS"] == "${{ matrix.mutants }}"  # make reads it from the environment
    score_job = next(job for job in workflow["jobs"].values() if "needs" in job)
    assert any("bench/mutation_score.py" in step.get("run", "") for step in score_job["steps"])


def test_every_mutated_module_is_run_by_exactly_one_shard():
    patterns = _shards()
    for path in sorted(ROOT.glob("ac/**/*.py")) + sorted(ROOT.glob("harness/**/*.py")):
        relative = str(path.relative_to(ROOT))
        if not _mutated(relative) or "def " not in path.read_text():
            continue
        module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        mutant = module + ".x_f__mutmut_1"  # mutmut names a package's mutants after the package
        owners = [shard for shard in patterns if any(fnmatch.fnmatch(mutant, p) for p in shard)]
        assert len(owners) == 1, f"{relative} is run by {len(owners)} shards of mutate.yml: {owners}"


def test_results_left_from_a_module_no_longer_mutated_are_not_scored(tmp_path, capsys):
    mutants = _mutants(
        tmp_path, {"harness.tiers.x_a__mutmut_1": KILLED, "harness.ci.provision.x_b__mutmut_1": 0}
    )
    assert set(score.verdicts([mutants], [], skip=["harness/ci/provision.py"])) == {
        "harness.tiers.x_a__mutmut_1"
    }
    assert "harness/ci/provision.py" in score.left_out()  # what the project leaves out, read from pyproject
