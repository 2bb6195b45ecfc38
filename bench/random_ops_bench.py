"""Gradients with random ops: every AC mode against no AC, eager and compiled, default config.

The MoE test model with dropout 0.2 (SDPA's dropout_p in attention, nn.Dropout
after attention and after the MoE). Eager modes are compared with eager no AC,
compiled modes (each block compiled after AC, torchtitan's order) with
compiled no AC. Prints a markdown table: forward loss equal, max abs gradient
difference.

    .venv/bin/python bench/random_ops_bench.py [--backend inductor] [--modes none,full,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch import nn

from ac import ACConfig, apply_ac
from ackit.models import moe
from ackit.presets import PRESETS
from harness import measure

ARGS = dataclasses.replace(moe.SIZES["tiny"], dropout=0.2)


def _step(config: ACConfig, backend: str | None) -> tuple[torch.Tensor, nn.Module]:
    model = apply_ac(moe.build(ARGS), config)
    if backend is not None:
        for block in model.layers.values():
            block.compile(backend=backend)
    tokens, targets = moe.batch(ARGS)
    torch.manual_seed(123)
    loss = moe.loss_fn(model(tokens), targets)
    loss.backward()
    return loss.detach(), model


def _max_grad_diff(expected: nn.Module, actual: nn.Module) -> float:
    want, got = measure.named_grads(expected), measure.named_grads(actual)
    return max((want[name] - got[name]).abs().max().item() for name in want)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--modes", default=",".join(PRESETS))
    args = parser.parse_args()
    modes = args.modes.split(",")
    torch.set_num_threads(1)
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, moe-tiny with dropout 0.2, CPU\n")
    print(
        f"| mode | eager: loss equal | eager: max abs grad diff | {args.backend}: loss equal | {args.backend}: max abs grad diff |"
    )
    print("|---|---|---|---|---|")
    references = {backend: _step(PRESETS["none"], backend) for backend in (None, args.backend)}
    for mode in modes:
        cells = [mode]
        for backend, (ref_loss, ref_model) in references.items():
            loss, model = _step(PRESETS[mode], backend)
            cells += [
                "yes" if torch.equal(loss, ref_loss) else "no",
                f"{_max_grad_diff(ref_model, model):.3g}",
            ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
