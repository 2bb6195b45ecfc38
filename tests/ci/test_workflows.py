"""The CI service as checked-in files: workflows, matrix, images.

These read the real files, so an edit that puts a GPU job on a hosted runner, drops
a timeout, unpins an action or forks the tier list away from harness.tiers fails here
before it reaches GitHub.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import devices, tiers
from harness.ci import inventory, matrix

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SHA_PIN = re.compile(r"^\s*-?\s*uses:\s*[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*\s*$")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load(name: str) -> dict[str, Any]:
    import yaml  # a GPU host may lack it; the GPU tiers never run this module's tests

    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def workflows() -> list[str]:
    return sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        head, sep, rest = line.partition(":")
        if sep and head and not rest.startswith("=") and not line.startswith(("\t", " ", "#", ".")):
            targets.update(head.split())
    return targets


def jobs_consuming(workflow: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """Jobs whose strategy matrix is `fromJSON(needs.<setup>.outputs.<group>)`."""
    found = []
    for job in workflow["jobs"].values():
        spec = job.get("strategy", {}).get("matrix")
        if isinstance(spec, str) and re.fullmatch(
            rf"\$\{{\{{ fromJSON\(needs\.\w+\.outputs\.{group}\) \}}\}}", spec
        ):
            found.append(job)
    return found


def expressions(job: dict[str, Any]) -> list[str]:
    return EXPRESSION.findall(json.dumps(job))


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load("ci.yml")


# A suite as the inventory describes it: CPU tests, one-GPU tests, multi-GPU tests needing 2, 3, 4 and 8.
ENTRIES = [
    inventory.TieredTest("tests/test_a.py::test_x[cpu]", "cpu", 0),
    inventory.TieredTest("tests/test_a.py::test_x[gpu]", "gpu", 1),
    *(inventory.TieredTest(f"tests/test_b.py::test_y[ws{n}-multigpu]", "multigpu", n) for n in (2, 3, 4, 8)),
]


@pytest.fixture
def jobs() -> list[matrix.Job]:
    return matrix.build(ENTRIES, image="registry.example/ci:cuda")


# --- the matrix: one source, the tiers --------------------------------------------------------


def test_matrix_covers_every_tier_with_its_make_target_and_devices(jobs: list[matrix.Job]) -> None:
    assert {job.tier for job in jobs} == set(tiers.TIERS)
    targets = makefile_targets()
    for job in jobs:
        tier = tiers.TIERS[job.tier]
        assert job.make == tier.make_target and job.make in targets, job
        assert job.gpus >= tier.min_gpus, job
        assert (job.group == "gpu") == (tier.min_gpus > 0), job
        assert (job.image == "") == (tier.min_gpus == 0), job


def test_gpu_jobs_select_their_tier_and_land_on_runners_with_enough_gpus(jobs: list[matrix.Job]) -> None:
    for job in (j for j in jobs if j.gpus):
        assert job.runs_on[0] == "self-hosted" and "gpu" in job.runs_on, job
        assert f"--tier {job.tier}" in job.pytest_args
        if job.gpus > 1:
            assert matrix.gpu_label(job.gpus) in job.runs_on


def test_cpu_shards_partition_the_suite(jobs: list[matrix.Job]) -> None:
    shards = [job for job in jobs if job.group == "cpu"]
    groups = sorted(int(re.search(r"--group (\d+)", j.pytest_args).group(1)) for j in shards)
    assert groups == list(range(1, len(shards) + 1))
    assert all(f"--splits {len(shards)}" in j.pytest_args for j in shards)
    assert len({j.artifact for j in jobs}) == len(jobs), "artifact names must not collide"
    assert all("--junitxml=reports/" in j.pytest_args for j in jobs)


def test_single_cpu_shard_runs_unsplit() -> None:
    (job,) = [j for j in matrix.build(ENTRIES, cpu_shards=1) if j.group == "cpu"]
    assert "--splits" not in job.pytest_args


def test_scale_set_prefix_targets_one_scale_set_per_gpu_count() -> None:
    gpu_jobs = [j for j in matrix.build(ENTRIES, scale_set_prefix="ac-gpu") if j.gpus]
    assert [j.runs_on for j in gpu_jobs] == [[f"ac-gpu-{j.gpus}"] for j in gpu_jobs]


def test_multigpu_jobs_are_sized_by_the_tests_needs(jobs: list[matrix.Job]) -> None:
    """Needs 2, 3, 4, 8 on runner classes 1, 2, 4, 8: three jobs, each selecting the tests it fits."""
    multi = {j.gpus: j.pytest_args for j in jobs if j.tier == "multigpu"}
    assert sorted(multi) == [2, 4, 8]
    assert "--gpu-range 2-2" in multi[2] and "--gpu-range 3-4" in multi[4] and "--gpu-range 8-8" in multi[8]
    (gpu,) = [j for j in jobs if j.tier == "gpu"]
    assert gpu.gpus == 1 and "--gpu-range" not in gpu.pytest_args
    assert all("--reruns 1" in j.pytest_args for j in jobs), "CI reruns a failure once"


def test_served_runner_classes_come_from_the_supervisor() -> None:
    assert matrix.served_gpu_counts(ROOT / matrix.RUNNER_SUPERVISOR) == [1, 2, 4, 8]


def test_check_names_a_test_no_runner_can_hold_and_an_unserved_label() -> None:
    big = [*ENTRIES, inventory.TieredTest("tests/test_c.py::test_z[ws16-multigpu]", "multigpu", 16)]
    served = [1, 2, 4, 8]
    problems = matrix.check(big, matrix.build(big, served=served), served)
    assert problems == [
        f"tests/test_c.py::test_z[ws16-multigpu] needs 16 GPUs; the largest runner class ({matrix.RUNNER_SUPERVISOR}) has 8"
    ]
    unserved = matrix.check(ENTRIES, matrix.build(ENTRIES, served=[1, 3, 8]), [1, 2, 4, 8])
    assert any("'gpu-3', which no runner" in problem for problem in unserved)


def _harness(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True)


def test_matrix_check_fails_on_a_planted_16_gpu_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Collection reads the GPU need from the marker; `matrix --check` refuses it.
    (The CI matrix job runs `matrix --check` on the whole project before every run.)"""
    pytester.makepyfile(
        test_planted="import pytest\n\n@pytest.mark.world_size(16)\ndef test_big():\n    pass\n"
    )
    listed = tmp_path / "inventory.json"
    pytester.runpytest("--collect-only", "-q", f"--harness-inventory={listed}", "-p", "no:cacheprovider")
    assert inventory.read(listed) == [
        inventory.TieredTest("test_planted.py::test_big[ws16-cpu]", "cpu", 0),
        inventory.TieredTest("test_planted.py::test_big[ws16-multigpu]", "multigpu", 16),
    ]
    bad = _harness("matrix", "--check", "--inventory", str(listed))
    assert bad.returncode == 1
    assert "test_planted.py::test_big[ws16-multigpu] needs 16 GPUs; the largest runner class" in bad.stderr
    good = _harness("matrix", "--check", "--inventory", str(listed.with_name("none.json")))
    assert good.returncode == 2 and "none.json" in good.stderr  # a missing file is a one-line error


def test_matrix_warns_when_durations_miss_more_than_a_tenth(tmp_path: Path) -> None:
    listed = tmp_path / "inventory.json"
    listed.write_text(json.dumps([{"id": f"t.py::t{i}[cpu]", "tier": "cpu", "gpus": 0} for i in range(10)]))
    recorded = tmp_path / "durations.json"
    recorded.write_text(json.dumps({f"t.py::t{i}[cpu]": 1.0 for i in range(9)}))
    assert (
        "warning" not in _harness("matrix", "--inventory", str(listed), "--durations", str(recorded)).stderr
    )
    recorded.write_text(json.dumps({f"t.py::t{i}[cpu]": 1.0 for i in range(8)}))
    warned = _harness("matrix", "--inventory", str(listed), "--durations", str(recorded)).stderr
    assert "2 of 10 CPU-tier tests (20%) have no duration" in warned


def test_bad_matrix_arguments_are_one_line_without_traceback() -> None:
    for args in (["matrix", "--cpu-shards", "0"], ["matrix", "--cpu-shards", "two"], ["no-such-command"]):
        run = _harness(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_cli_writes_github_outputs_for_every_group(tmp_path: Path) -> None:
    out = tmp_path / "github_output"
    listed = tmp_path / "inventory.json"
    listed.write_text(json.dumps([vars(e) for e in ENTRIES]))
    subprocess.run(
        [sys.executable, "-m", "harness", "matrix", "--inventory", str(listed), "--github-output", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    expected = matrix.as_matrices(matrix.build(ENTRIES))
    for group, spec in expected.items():
        assert json.loads(lines[group]) == spec
        assert int(lines[f"{group}-jobs"]) == len(spec["include"])


def test_durations_file_names_only_existing_test_files() -> None:
    durations = json.loads((ROOT / matrix.DURATIONS_FILE).read_text())
    assert durations, "pytest-split needs recorded durations to balance shards"
    for node_id in durations:
        assert (ROOT / node_id.split("::")[0]).is_file(), (
            f"stale entry in .test_durations: {node_id}; refresh it as docs/ci.md says"
        )


def test_later_tier_option_narrows_the_makefile_tier_list(pytester: pytest.Pytester, monkeypatch) -> None:
    """GPU jobs pass `--tier <name>` after the Makefile's own list; pytest must keep the last."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    pytester.makeini("[pytest]\nharness = true\n")
    pytester.makepyfile(test_one="def test_one(tier):\n    pass\n")
    result = pytester.runpytest("--tier", "no-such-tier", "--tier", "cpu", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert "test_one.py::test_one[cpu]" in result.stdout.str()


# --- workflows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", workflows())
def test_workflow_is_least_privilege_with_timeouts(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    assert "pull_request_target" not in workflow["on"], "runs fork code with a write token"
    for job_id, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name}:{job_id} has no timeout-minutes"
        permissions = job.get("permissions", {})
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes <= {"packages"}, f"{name}:{job_id} asks for {writes}"
        if writes:
            assert "pull_request" not in workflow["on"], f"{name}:{job_id} would write from pull requests"


@pytest.mark.parametrize("name", workflows())
def test_actions_are_pinned_by_sha_and_checkout_drops_credentials(name: str) -> None:
    for line in (WORKFLOWS / name).read_text().splitlines():
        if re.match(r"^\s*-?\s*uses:", line):
            assert SHA_PIN.match(line), (
                f"{name}: not pinned by commit SHA with a version comment: {line.strip()}"
            )
    for job in load(name)["jobs"].values():
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False


def test_pull_requests_and_main_trigger_ci_and_superseded_runs_cancel(ci: dict[str, Any]) -> None:
    assert {"pull_request", "push", "workflow_dispatch"} <= set(ci["on"])
    assert ci["on"]["push"]["branches"] == ["main"]
    concurrency = ci["concurrency"]
    assert "pull_request.number" in concurrency["group"]
    assert "pull_request" in str(concurrency["cancel-in-progress"])


def test_ci_uses_no_secrets(ci: dict[str, Any]) -> None:
    assert "secrets." not in (WORKFLOWS / "ci.yml").read_text()


def test_cpu_jobs_run_make_on_hosted_runners(ci: dict[str, Any], jobs: list[matrix.Job]) -> None:
    (cpu,) = jobs_consuming(ci, "cpu")
    assert "container" not in cpu
    assert cpu["runs-on"] == "${{ matrix.runs_on }}"
    assert all(j.runs_on == [matrix.HOSTED_RUNNER] for j in jobs if j.group == "cpu")
    assert "download.pytorch.org/whl/cpu" in cpu["env"]["TORCH_PIP_ARGS"]
    assert_runs_make_and_uploads_junit(cpu)
    assert "cpu-jobs" in cpu["if"], "an empty matrix must skip the job, not fail it"


def test_gpu_jobs_run_in_the_image_with_gpus_after_a_visibility_check(ci: dict[str, Any]) -> None:
    (gpu,) = jobs_consuming(ci, "gpu")
    assert gpu["runs-on"] == "${{ matrix.runs_on }}"
    container = gpu["container"]
    assert container["image"] == "${{ matrix.image }}"
    options = container["options"].split()
    assert "--gpus" in options and "--ipc=host" in options
    assert "--user" not in options, "job containers must stay root for actions/checkout"
    runs = [step.get("run", "") for step in gpu["steps"]]
    check = next(i for i, run in enumerate(runs) if "harness check-gpus" in run)
    make = next(i for i, run in enumerate(runs) if run.startswith("make "))
    assert check < make
    assert "GPUS_NEEDED" in runs[check] and gpu["env"]["GPUS_NEEDED"] == "${{ matrix.gpus }}"
    assert_runs_make_and_uploads_junit(gpu)
    assert "gpu-jobs" in gpu["if"]
    assert "pull_request" in gpu["if"], "fork pull requests need an explicit opt-in"


def assert_runs_make_and_uploads_junit(job: dict[str, Any]) -> None:
    assert job["env"]["MAKE_TARGET"] == "${{ matrix.make }}"
    assert job["env"]["PYTEST_ARGS"] == "${{ matrix.pytest_args }}"
    assert any(step.get("run", "").strip().startswith('make "$MAKE_TARGET"') for step in job["steps"])
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == f"{matrix.REPORTS_DIR}/"
    assert "always()" in upload["if"] or "cancelled()" in upload["if"]


@pytest.mark.parametrize("name", workflows())
def test_run_scripts_take_matrix_values_from_env_not_templates(name: str) -> None:
    """`${{ matrix.x }}` pasted into a script is code injection; values go through env."""
    for job in load(name)["jobs"].values():
        for step in job.get("steps", []):
            assert not EXPRESSION.search(step.get("run", "")), step["run"]


def test_matrix_fields_used_by_workflows_exist() -> None:
    fields = set(matrix.Job.__dataclass_fields__)
    for name in workflows():
        text = (WORKFLOWS / name).read_text()
        if "fromJSON(needs." not in text:
            continue
        used = set(re.findall(r"(?<![\w.])matrix\.(\w+)", text))
        assert used <= fields, f"{name} reads matrix fields the generator does not write: {used - fields}"


# --- images ------------------------------------------------------------------------------------


def test_test_image_is_built_by_make_setup_with_a_pinned_cuda_wheel() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert any("make setup" in line for line in instructions)
    assert not any(re.search(r"pip install .*torch", line) for line in instructions), "second install recipe"
    assert re.search(r"download\.pytorch\.org/whl/\$\{CUDA_WHEELS\}", text)
    assert re.search(r"ARG CUDA_WHEELS=cu\d{3}", text)
    assert "NCCL_" in text
    assert not re.search(r"^USER\s+(?!root|0\b)", text, re.MULTILINE), "job containers must run as root"


def test_images_workflow_builds_what_gpu_jobs_pull() -> None:
    workflow = load("images.yml")
    built = {
        (e["file"], e["tag"], e["flavour"])
        for e in workflow["jobs"]["build"]["strategy"]["matrix"]["include"]
    }
    flavour = matrix.ci_image("Owner/Repo").rsplit(":", 1)[1]
    assert ("docker/Dockerfile", f"ci:{flavour}", flavour) in built
    assert any(file == "docker/runner/Dockerfile" for file, _, _ in built)
    assert matrix.ci_image("Owner/Repo") == f"ghcr.io/owner/repo/ci:{flavour}"
