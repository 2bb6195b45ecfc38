"""The CI matrix, derived from `harness.tiers` and the collected tests, so no workflow lists tiers.

`python -m harness matrix` collects the suite (`pytest --collect-only
--harness-inventory`), prints the jobs as JSON and, with `--github-output`,
writes one `fromJSON`-ready line per group to `$GITHUB_OUTPUT`. Tiers that need
no GPU become duration-balanced shards on hosted runners; a GPU tier becomes
one self-hosted job per runner class its tests need, where the classes are the
`gpu-N` labels that docker/runner/supervise.sh serves, in the CUDA image
built from docker/Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import devices, tiers
from harness.ci import durations, inventory

HOSTED_RUNNER = "ubuntu-latest"
SELF_HOSTED_BASE = ("self-hosted", "linux", "x64", "gpu")
DEFAULT_CPU_SHARDS = 2
DURATIONS_FILE = ".test_durations"
REPORTS_DIR = "reports"
RUNNER_SUPERVISOR = Path("docker/runner/supervise.sh")
# Reruns of a failed test in CI (pytest-rerunfailures; multi-rank tests on fresh ranks).
CI_RERUNS = 1


@dataclass(frozen=True)
class Job:
    """One matrix entry; field names are what workflows read as `matrix.<field>`."""

    name: str
    tier: str
    group: str
    runs_on: list[str]
    make: str
    pytest_args: str
    gpus: int
    image: str
    artifact: str


def gpu_label(count: int) -> str:
    """Label a runner carries for each device count it can serve (gpu-2, gpu-4...)."""
    return f"gpu-{count}"


def served_gpu_counts(supervisor: Path = RUNNER_SUPERVISOR) -> list[int]:
    """The runner classes the self-hosted supervisor labels: 1 (plain `gpu`) and each `gpu-N` of its loop."""
    text = supervisor.read_text()
    loop = re.search(r"^for n in ([\d ]+); do", text, re.MULTILINE)
    if loop is None:
        raise ValueError(f"{supervisor}: no `for n in ...; do` loop naming the gpu-N labels it serves")
    return [1, *sorted(int(n) for n in loop.group(1).split())]


def runner_labels(gpus: int, scale_set_prefix: str = "") -> list[str]:
    """Hosted for CPU work; self-hosted with a `gpu-N` label once a job needs several devices.

    actions-runner-controller scale sets answer to their name alone, so with a prefix
    a GPU job targets the scale set `<prefix>-<gpus>` instead of a label set.
    """
    if gpus == 0:
        return [HOSTED_RUNNER]
    if scale_set_prefix:
        return [f"{scale_set_prefix}-{gpus}"]
    labels = list(SELF_HOSTED_BASE)
    if gpus > 1:
        labels.append(gpu_label(gpus))
    return labels


def ci_image(repository: str | None, flavour: str = "cuda") -> str:
    """Registry image of docker/Dockerfile's flavour (GHCR names must be lower case)."""
    if not repository:
        return f"ac-harness-ci:{flavour}"
    return f"ghcr.io/{repository.lower()}/ci:{flavour}"


def collect(paths: list[str]) -> list[inventory.TieredTest]:
    """Every tiered test of the suite with its GPU need, from pytest's own collection."""
    with tempfile.TemporaryDirectory(prefix="harness-inventory-") as scratch:
        target = Path(scratch) / "inventory.json"
        command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        run = subprocess.run(
            [*command, f"--harness-inventory={target}", *paths], capture_output=True, text=True, check=False
        )
        if run.returncode != 0 or not target.exists():
            raise ValueError(
                f"collecting the tests failed ({' '.join(command + paths)}):\n{run.stdout[-3000:]}{run.stderr[-2000:]}"
            )
        return inventory.read(target)


def gpu_classes(needs: set[int], served: list[int]) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """{runner class: (lowest, highest need it runs)} and the needs no class can serve."""
    classes: dict[int, tuple[int, int]] = {}
    unserved = []
    for need in sorted(needs):
        fits = [count for count in served if count >= need]
        if not fits:
            unserved.append(need)
            continue
        low, _ = classes.get(fits[0], (need, need))
        classes[fits[0]] = (low, need)
    return classes, unserved


def _junit(stem: str) -> str:
    return f"--junitxml={REPORTS_DIR}/junit-{stem}.xml"


def _cpu_jobs(tier: tiers.Tier, cpu_shards: int) -> list[Job]:
    jobs = []
    for index in range(1, cpu_shards + 1):
        stem = f"{tier.name}-{index}of{cpu_shards}"
        split = f"--splits {cpu_shards} --group {index} --splitting-algorithm least_duration --durations-path {DURATIONS_FILE} "
        args = f"{split if cpu_shards > 1 else ''}--reruns {CI_RERUNS} {_junit(stem)}"
        jobs.append(
            Job(
                name=f"{tier.name} {index}/{cpu_shards}",
                tier=tier.name,
                group="cpu",
                runs_on=runner_labels(0),
                make=tier.make_target,
                pytest_args=args,
                gpus=0,
                image="",
                artifact=f"junit-{stem}",
            )
        )
    return jobs


def build(
    entries: list[inventory.TieredTest],
    cpu_shards: int = DEFAULT_CPU_SHARDS,
    image: str = "",
    scale_set_prefix: str = "",
    served: list[int] | None = None,
) -> list[Job]:
    """Every CI job, in tier order: CPU tiers sharded, GPU tiers one job per runner class their tests need."""
    if cpu_shards < 1:
        raise ValueError(f"--cpu-shards {cpu_shards}: need at least one shard")
    served = served_gpu_counts() if served is None else served
    image = image or ci_image(os.environ.get("GITHUB_REPOSITORY"))
    jobs = []
    for tier in tiers.TIERS.values():
        if tier.min_gpus == 0:
            jobs += _cpu_jobs(tier, cpu_shards)
            continue
        needs = {max(e.gpus, tier.min_gpus) for e in entries if e.tier == tier.name}
        classes, _ = gpu_classes(needs, served)
        for gpus, (low, high) in sorted(classes.items()):
            several = len(classes) > 1
            stem = f"{tier.name}-{gpus}gpu" if several else tier.name
            selection = f" --gpu-range {low}-{high}" if several else ""
            jobs.append(
                Job(
                    name=f"{tier.name} ({gpus} GPU{'s' if gpus > 1 else ''})",
                    tier=tier.name,
                    group="gpu",
                    runs_on=runner_labels(gpus, scale_set_prefix),
                    make=tier.make_target,
                    pytest_args=f"--tier {tier.name}{selection} --reruns {CI_RERUNS} {_junit(stem)}",
                    gpus=gpus,
                    image=image,
                    artifact=f"junit-{stem}",
                )
            )
    return jobs


def check(entries: list[inventory.TieredTest], jobs: list[Job], served: list[int]) -> list[str]:
    """What would leave a test without a runner: a need beyond every runner class, or a label no runner serves."""
    problems = []
    for entry in entries:
        if tiers.TIERS[entry.tier].min_gpus and entry.gpus > max(served):
            problems.append(
                f"{entry.id} needs {entry.gpus} GPUs; the largest runner class ({RUNNER_SUPERVISOR}) has {max(served)}"
            )
    labels = {gpu_label(n) for n in served if n > 1}
    for job in jobs:
        for label in job.runs_on:
            if label.startswith("gpu-") and label not in labels:
                problems.append(
                    f"job {job.name!r} asks for label {label!r}, which no runner in {RUNNER_SUPERVISOR.parent} serves"
                )
    return problems


def duration_warning(entries: list[inventory.TieredTest], path: Path = Path(DURATIONS_FILE)) -> str | None:
    """A warning when shards would balance on guesses: too many CPU-tier tests without a recorded duration."""
    collected = [e.id for e in entries if tiers.TIERS[e.tier].min_gpus == 0]
    missing, share = durations.coverage(collected, durations.load(path))
    if share <= durations.MAX_MISSING_SHARE:
        return None
    return (
        f"{len(missing)} of {len(collected)} CPU-tier tests ({share:.0%}) have no duration in {path}; "
        f"shards will be uneven. Refresh it with `make durations` (first missing: {missing[0]})"
    )


def as_matrices(jobs: list[Job]) -> dict[str, dict[str, list[dict[str, object]]]]:
    """Jobs grouped for `strategy.matrix: ${{ fromJSON(...) }}` (an `include` list per group)."""
    groups: dict[str, dict[str, list[dict[str, object]]]] = {"cpu": {"include": []}, "gpu": {"include": []}}
    for job in jobs:
        groups[job.group]["include"].append(asdict(job))
    return groups


def write_github_output(matrices: dict[str, dict[str, list[dict[str, object]]]], path: str) -> None:
    """`<group>=<json>` and `<group>-jobs=<count>`: the count lets a workflow skip an empty group."""
    with open(path, "a") as out:
        for group, matrix in matrices.items():
            out.write(f"{group}={json.dumps(matrix, separators=(',', ':'))}\n")
            out.write(f"{group}-jobs={len(matrix['include'])}\n")


def check_gpus(required: int) -> tuple[bool, str]:
    """Whether this machine shows at least `required` GPUs, to torch too, not just the environment.

    A runner whose container lacks `--gpus` still lists CUDA_VISIBLE_DEVICES from the
    host's config; counting what CUDA can open catches that before tests run.
    """
    listed = devices.visible_gpus()
    usable = len(listed)
    detail = f"visible: {listed or 'none'}"
    if not devices.fake_gpu_count() and listed:
        import torch

        usable = min(usable, torch.cuda.device_count())
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        detail += f"; torch sees {torch.cuda.device_count()}: {names}"
    if usable < required:
        return False, f"this job needs {required} GPU(s) but only {usable} are usable ({detail})"
    return True, f"{usable} GPU(s) usable, {required} needed ({detail})"
