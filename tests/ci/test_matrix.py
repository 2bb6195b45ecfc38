"""The CI matrix built for a few suites, stated whole: job names, runners, sizes, pytest arguments."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from harness import devices
from harness.ci import inventory, matrix

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

SERVED = [1, 2, 4, 8]
BASE = ["self-hosted", "linux", "x64", "gpu"]
SPLIT = "--splits 2 --group {i} --splitting-algorithm least_duration --durations-path .test_durations"


def _entries(tier: str, *needs: int) -> list[inventory.TieredTest]:
    return [inventory.TieredTest(f"t.py::t{i}[{tier}]", tier, need) for i, need in enumerate(needs)]


def _cpu_job(index: int, shards: int) -> dict[str, object]:
    split = SPLIT.format(i=index) + " " if shards > 1 else ""
    return {
        "name": f"cpu {index}/{shards}",
        "tier": "cpu",
        "group": "cpu",
        "runs_on": ["ubuntu-latest"],
        "make": "test-cpu",
        "pytest_args": f"{split}--reruns 1 --junitxml=reports/junit-cpu-{index}of{shards}.xml",
        "gpus": 0,
        "image": "",
        "artifact": f"junit-cpu-{index}of{shards}",
    }


def _gpu_job(tier: str, gpus: int, selection: str = "") -> dict[str, object]:
    stem = f"{tier}-{gpus}gpu" if selection else tier
    return {
        "name": f"{tier} ({gpus} GPU{'s' if gpus > 1 else ''})",
        "tier": tier,
        "group": "gpu",
        "runs_on": BASE + ([f"gpu-{gpus}"] if gpus > 1 else []),
        "make": "test-gpu",
        "pytest_args": f"--tier {tier}{selection} --reruns 1 --junitxml=reports/junit-{stem}.xml",
        "gpus": gpus,
        "image": "img",
        "artifact": f"junit-{stem}",
    }


def test_a_suite_needing_1_to_8_gpus_gets_two_cpu_shards_and_one_job_per_runner_class():
    entries = [*_entries("cpu", 0), *_entries("gpu", 1), *_entries("multigpu", 2, 3, 4, 8)]
    assert matrix.as_matrices(matrix.build(entries, image="img", served=SERVED)) == {
        "cpu": {"include": [_cpu_job(1, 2), _cpu_job(2, 2)]},
        "gpu": {
            "include": [
                _gpu_job("gpu", 1),
                _gpu_job("multigpu", 2, " --gpu-range 2-2"),
                _gpu_job("multigpu", 4, " --gpu-range 3-4"),
                _gpu_job("multigpu", 8, " --gpu-range 8-8"),
            ]
        },
    }


def test_a_cpu_only_suite_gets_one_unsplit_shard_and_no_gpu_job():
    jobs = matrix.build(_entries("cpu", 0, 0), cpu_shards=1, image="img", served=SERVED)
    assert matrix.as_matrices(jobs) == {"cpu": {"include": [_cpu_job(1, 1)]}, "gpu": {"include": []}}


def test_three_cpu_shards_cover_groups_one_to_three():
    jobs = matrix.build([], cpu_shards=3, image="img", served=SERVED)
    assert [(j.name, j.pytest_args.split(" --splitting")[0]) for j in jobs] == [
        ("cpu 1/3", "--splits 3 --group 1"),
        ("cpu 2/3", "--splits 3 --group 2"),
        ("cpu 3/3", "--splits 3 --group 3"),
    ]


def test_gpu_tier_tests_needing_two_devices_split_the_gpu_tier_by_runner_class():
    """A one-GPU-tier test with gpus(2) needs a gpu-2 runner; a need of 0 still takes one device."""
    jobs = matrix.build([*_entries("gpu", 0, 1, 2), *_entries("multigpu", 2)], image="img", served=SERVED)
    assert [asdict(j) for j in jobs if j.group == "gpu"] == [
        _gpu_job("gpu", 1, " --gpu-range 1-1"),
        _gpu_job("gpu", 2, " --gpu-range 2-2"),
        _gpu_job("multigpu", 2),
    ]


def test_a_multigpu_test_needing_one_gpu_still_runs_on_a_two_gpu_runner():
    (job,) = [j for j in matrix.build(_entries("multigpu", 1), image="img", served=SERVED) if j.gpus]
    assert asdict(job) == _gpu_job("multigpu", 2)


def test_scale_sets_replace_label_sets_for_gpu_jobs_only():
    entries = [*_entries("cpu", 0), *_entries("gpu", 1), *_entries("multigpu", 2, 8)]
    jobs = matrix.build(entries, cpu_shards=1, image="img", scale_set_prefix="arc", served=SERVED)
    assert [j.runs_on for j in jobs] == [["ubuntu-latest"], ["arc-1"], ["arc-2"], ["arc-8"]]


def test_the_image_defaults_to_the_repositorys_registry_image(monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", "Some-Org/AC-Harness")
    jobs = matrix.build(_entries("gpu", 1), served=SERVED)
    assert {j.image for j in jobs if j.gpus} == {"ghcr.io/some-org/ac-harness/ci:cuda"}
    monkeypatch.delenv("GITHUB_REPOSITORY")
    assert {j.image for j in matrix.build(_entries("gpu", 1), served=SERVED) if j.gpus} == {
        "ac-harness-ci:cuda"
    }
    assert matrix.ci_image("o/r", "rocm") == "ghcr.io/o/r/ci:rocm"


def test_zero_cpu_shards_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^--cpu-shards 0: need at least one shard$"):
        matrix.build([], cpu_shards=0, served=SERVED)


@pytest.mark.parametrize(
    ("gpus", "prefix", "labels"),
    [
        (0, "", ["ubuntu-latest"]),
        (0, "arc", ["ubuntu-latest"]),
        (1, "", BASE),
        (2, "", [*BASE, "gpu-2"]),
        (3, "", [*BASE, "gpu-3"]),
        (1, "arc", ["arc-1"]),
    ],
)
def test_runner_labels(gpus, prefix, labels):
    assert matrix.runner_labels(gpus, prefix) == labels


def test_runner_labels_default_to_label_sets():
    assert matrix.runner_labels(4) == [*BASE, "gpu-4"]


def test_each_need_goes_to_the_smallest_class_that_holds_it():
    classes, unserved = matrix.gpu_classes({1, 2, 3, 5, 9, 12}, SERVED)
    assert classes == {1: (1, 1), 2: (2, 2), 4: (3, 3), 8: (5, 5)}
    assert unserved == [9, 12]
    assert matrix.gpu_classes({3, 4}, SERVED) == ({4: (3, 4)}, [])
    assert matrix.gpu_classes(set(), SERVED) == ({}, [])


def test_served_classes_are_one_and_the_supervisors_loop_sorted(tmp_path):
    supervisor = tmp_path / "supervise.sh"
    supervisor.write_text("#!/bin/sh\nfor n in 8 2 4; do\n  label gpu-$n\ndone\n")
    assert matrix.served_gpu_counts(supervisor) == [1, 2, 4, 8]
    supervisor.write_text("#!/bin/sh\nlabel gpu\n")
    with pytest.raises(ValueError) as error:
        matrix.served_gpu_counts(supervisor)
    assert str(error.value) == f"{supervisor}: no `for n in ...; do` loop naming the gpu-N labels it serves"


def test_check_accepts_the_built_matrix_and_names_every_problem():
    entries = [*_entries("cpu", 0, 16), *_entries("multigpu", 2, 16)]
    jobs = matrix.build(entries[:3], image="img", served=SERVED)
    assert matrix.check(entries[:3], jobs, SERVED) == []  # a cpu-tier id's need never counts
    stray = replace(jobs[-1], name="odd", runs_on=[*BASE, "gpu-1", "gpu-3"])
    assert matrix.check(entries, [*jobs, stray], SERVED) == [
        f"t.py::t1[multigpu] needs 16 GPUs; the largest runner class ({matrix.RUNNER_SUPERVISOR}) has 8",
        f"job 'odd' asks for label 'gpu-1', which no runner in {matrix.RUNNER_SUPERVISOR.parent} serves",
        f"job 'odd' asks for label 'gpu-3', which no runner in {matrix.RUNNER_SUPERVISOR.parent} serves",
    ]


def test_github_output_gets_each_group_as_one_json_line_with_its_job_count(tmp_path):
    out = tmp_path / "github_output"
    out.write_text("earlier=1\n")
    jobs = matrix.build(_entries("gpu", 1), cpu_shards=1, image="img", served=SERVED)
    matrix.write_github_output(matrix.as_matrices(jobs), str(out))
    cpu, gpu = json.dumps({"include": [_cpu_job(1, 1)]}), json.dumps({"include": [_gpu_job("gpu", 1)]})
    compact = [json.dumps(json.loads(text), separators=(",", ":")) for text in (cpu, gpu)]
    assert out.read_text() == f"earlier=1\ncpu={compact[0]}\ncpu-jobs=1\ngpu={compact[1]}\ngpu-jobs=1\n"


@pytest.fixture
def shown(monkeypatch):
    """The devices this machine lists: fake ones, or a recorded list of real-looking ones."""

    def show(listed: str, fake: int = 0) -> None:
        monkeypatch.setenv(devices.FAKE_GPUS_ENV, str(fake))
        if fake:
            monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
        else:
            monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, listed)

    return show


def test_a_gpu_job_checks_it_has_the_gpus_it_needs(shown):
    shown("", fake=2)
    assert matrix.check_gpus(2) == (True, "2 GPU(s) usable, 2 needed (visible: ['fake0', 'fake1'])")
    assert matrix.check_gpus(3) == (
        False,
        "this job needs 3 GPU(s) but only 2 are usable (visible: ['fake0', 'fake1'])",
    )
    shown("")
    assert matrix.check_gpus(1) == (False, "this job needs 1 GPU(s) but only 0 are usable (visible: none)")
    assert matrix.check_gpus(0) == (True, "0 GPU(s) usable, 0 needed (visible: none)")


@pytest.mark.skipif(
    torch.cuda.device_count() > 0, reason="this host's GPUs are usable; the check is for a host without"
)
def test_gpus_listed_in_the_environment_but_not_usable_by_torch_do_not_count(shown):
    """A runner container started without --gpus still lists its host's devices."""
    shown("0,1")
    assert matrix.check_gpus(1) == (
        False,
        "this job needs 1 GPU(s) but only 0 are usable (visible: ['0', '1']; torch sees 0: [])",
    )


@pytest.mark.parametrize("count", ["-1", "two", "1.5"])
def test_check_gpus_refuses_a_count_that_is_not_one_in_one_line(capsys, count):
    from harness import __main__ as harness_main
    from harness import cli

    with pytest.raises(SystemExit) as exit_:  # argparse's own exit for a bad argument
        cli.run(harness_main.main, harness_main.PROG, ["check-gpus", count])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{count!r} is not a GPU count" in err[0], err
