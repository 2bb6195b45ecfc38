"""The reference models by name: what the AC report, the tests and the benchmarks build.

Importing this package does not import torch, so `python -m ackit` can list
the names; building a model does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Built:
    """One model with its batch, ready to step."""

    model: nn.Module
    step: Callable[[], torch.Tensor]  # forward and loss on the batch
    inputs: list[torch.Tensor]  # tensors the step reads; held with or without AC
    block_input: Callable[[], torch.Tensor]  # what the first block receives, to study one block alone


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., Built]  # (device, **options) -> Built
    report_devices: tuple[str, ...] = ("cpu", "cuda")  # device types whose default report has it


def build_toy(device: torch.device | str = "cpu", n_blocks: int = 1) -> Built:
    """torchtitan's toy (`ackit.models.toy`) and its input."""
    import torch

    from ackit.models.toy import ToyModel, toy_input

    torch.manual_seed(0)
    model = ToyModel(n_blocks=n_blocks).to(device)
    x = toy_input(device)
    return Built(model, lambda: model(x), [x], lambda: x)


def build_moe(size: str, device: torch.device | str = "cpu", dtype: str = "float32") -> Built:
    """The MoE transformer (`ackit.models.moe`) at one of its `SIZES`, with a batch."""
    import torch

    from ackit.models import moe

    args = moe.SIZES[size]
    model = moe.build(args, device=device, dtype=getattr(torch, dtype))
    tokens, targets = moe.batch(args, device=device)
    return Built(
        model,
        lambda: moe.loss_fn(model(tokens), targets),
        [tokens],
        lambda: model.tok_embeddings(tokens),
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("toy", build_toy),
        ModelSpec("moe-tiny", functools.partial(build_moe, "tiny")),
        ModelSpec("moe-small", functools.partial(build_moe, "small")),
        # About a minute more on a 2-core CPU: asked for by name.
        ModelSpec("moe-medium", functools.partial(build_moe, "medium"), report_devices=()),
        ModelSpec("moe-gpu", functools.partial(build_moe, "gpu", dtype="bfloat16"), report_devices=("cuda",)),
    )
}


def report_defaults(device_type: str) -> list[str]:
    """The models a report on this device type measures unless told otherwise."""
    return [name for name, spec in MODELS.items() if device_type in spec.report_devices]


def build(name: str, device: torch.device | str = "cpu", **options: object) -> Built:
    """Build a reference model by name; an unknown name is a ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models are {list(MODELS)}")
    return MODELS[name].build(device, **options)
