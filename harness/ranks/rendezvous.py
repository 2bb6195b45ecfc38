"""Where ranks meet: a TCPStore the pytest process hosts on a port the OS picks.

Binding port 0 cannot collide with another xdist worker or CI job on the host.
Ranks get torchrun's environment and `TORCHELASTIC_USE_AGENT_STORE`, so
`init_process_group("env://")` connects to the hosting process as torchrun's
agent store would, and code that reads RANK / LOCAL_RANK works unchanged.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

HOST = "127.0.0.1"


def host_store(world_size: int, timeout_s: float) -> dist.TCPStore:
    """A store server for one pool of ranks, listening on a fresh port."""
    return dist.TCPStore(HOST, 0, world_size, True, timedelta(seconds=timeout_s), wait_for_workers=False)


def rank_env(rank: int, world_size: int, port: int, cuda_ids: tuple[str, ...]) -> dict[str, str]:
    """torchrun's variables for one rank on one host; CUDA ranks see only the leased devices."""
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "MASTER_ADDR": HOST,
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    if cuda_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(cuda_ids)
    return env


def init_default_group(backend: str, timeout_s: float) -> None:
    """Initialise the default process group from the environment `rank_env` wrote."""
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
