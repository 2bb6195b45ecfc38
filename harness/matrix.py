"""The CI matrix, derived from `harness.tiers` so no workflow lists tiers itself.

`python -m harness matrix` prints it as JSON; with `--github-output` it writes
one `fromJSON`-ready line per group to `$GITHUB_OUTPUT`. Tiers that need no GPU
become duration-balanced shards on hosted runners; every GPU tier becomes one
job on self-hosted runners whose labels promise enough devices, in the CUDA
image built from docker/Dockerfile.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from harness import devices, tiers

HOSTED_RUNNER = "ubuntu-latest"
SELF_HOSTED_BASE = ("self-hosted", "linux", "x64", "gpu")
DEFAULT_CPU_SHARDS = 2
# Devices a multi-GPU tier's job asks for: the largest runner class the pool offers.
DEFAULT_MULTI_GPUS = 4
DURATIONS_FILE = ".test_durations"
REPORTS_DIR = "reports"


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


def job_gpus(tier: tiers.Tier, multi_gpus: int) -> int:
    """A single-device tier takes what it needs; a multi-device tier takes a whole runner class."""
    if tier.min_gpus <= 1:
        return tier.min_gpus
    return max(tier.min_gpus, multi_gpus)


def _junit(stem: str) -> str:
    return f"--junitxml={REPORTS_DIR}/junit-{stem}.xml"


def build(
    cpu_shards: int = DEFAULT_CPU_SHARDS,
    multi_gpus: int = DEFAULT_MULTI_GPUS,
    image: str = "",
    scale_set_prefix: str = "",
) -> list[Job]:
    """Every CI job, in tier order: CPU tiers sharded, GPU tiers one job each."""
    if cpu_shards < 1:
        raise ValueError(f"cpu_shards={cpu_shards}: need at least one shard")
    image = image or ci_image(os.environ.get("GITHUB_REPOSITORY"))
    jobs = []
    for tier in tiers.TIERS.values():
        if tier.min_gpus == 0:
            for index in range(1, cpu_shards + 1):
                stem = f"{tier.name}-{index}of{cpu_shards}"
                split = f"--splits {cpu_shards} --group {index} --splitting-algorithm least_duration"
                args = (
                    f"{split} --durations-path {DURATIONS_FILE} {_junit(stem)}"
                    if cpu_shards > 1
                    else _junit(stem)
                )
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
            continue
        gpus = job_gpus(tier, multi_gpus)
        jobs.append(
            Job(
                name=f"{tier.name} ({gpus} GPU{'s' if gpus > 1 else ''})",
                tier=tier.name,
                group="gpu",
                runs_on=runner_labels(gpus, scale_set_prefix),
                make=tier.make_target,
                pytest_args=f"--tier {tier.name} {_junit(tier.name)}",
                gpus=gpus,
                image=image,
                artifact=f"junit-{tier.name}",
            )
        )
    return jobs


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
