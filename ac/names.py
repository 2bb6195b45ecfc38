"""Op-output names inside a block, so users can say by name what op-SAC saves.

An op's output is named `<module path>.<op>_<k>`: the path of the innermost
module of the block it runs in (relative to the block; empty for the block's
own code), the op's name (`mm`, `bmm`, `_scaled_dot_product_flash_attention_for_cpu`)
and k, its count among that module's calls of that op in one forward. So
`attention.wq.mm_0` is the first matmul of the block's `attention.wq`.
Patterns match with `*` wildcards (`fnmatch`; `*` also crosses dots), e.g.
`attention.*` or `*.mm_1`. `op_names(block, *inputs)` lists a block's names.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_map_only


def op_label(func: Any) -> str:
    """The op part of a name: the overload packet's name (`mm` for `aten.mm.default`)."""
    packet = getattr(func, "overloadpacket", None)
    return packet.__name__ if packet is not None else str(func.name())


class Scopes:
    """Tracks which module of a block is running, through forward hooks on its submodules.

    Hooks, not a global module tracker: only this block's modules pay for them.
    """

    def __init__(self, block: nn.Module) -> None:
        self.stack: list[str] = [""]
        self.handles = []
        for path, module in block.named_modules():
            if path:
                self.handles.append(module.register_forward_pre_hook(self._Enter(self, path)))
                self.handles.append(module.register_forward_hook(self._Leave(self), always_call=True))

    def remove(self) -> None:
        """Take the hooks off the block again."""
        for handle in self.handles:
            handle.remove()

    @property
    def current(self) -> str:
        return self.stack[-1]

    class _Enter:
        def __init__(self, scopes: Scopes, path: str) -> None:
            self.scopes, self.path = scopes, path

        def __call__(self, module: nn.Module, inputs: Any) -> None:
            self.scopes.stack.append(self.path)

    class _Leave:
        def __init__(self, scopes: Scopes) -> None:
            self.scopes = scopes

        def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
            self.scopes.stack.pop()


class Namer:
    """Names the ops of one forward in call order; a fresh one per forward."""

    def __init__(self, scopes: Scopes) -> None:
        self.scopes = scopes
        self.calls: Counter[tuple[str, str]] = Counter()

    def name(self, func: Any) -> str:
        scope, label = self.scopes.current, op_label(func)
        k = self.calls[scope, label]
        self.calls[scope, label] = k + 1
        return f"{scope}.{label}_{k}" if scope else f"{label}_{k}"


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def unmatched(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    """The patterns no name matches, in order, once each."""
    names = list(names)
    return [p for p in dict.fromkeys(patterns) if not any(fnmatch.fnmatchcase(n, p) for n in names)]


class _Recorder(TorchDispatchMode):
    def __init__(self, namer: Namer) -> None:
        super().__init__()
        self.namer = namer
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.namespace != "prim":  # fake tensors' metadata queries: no kernel, no name
            self.names.append(self.namer.name(func))
        return out


def op_names(block: nn.Module, /, *args: Any, **kwargs: Any) -> list[str]:
    """The names of `block`'s op outputs in one forward with these inputs, in call order.

    Runs the block once on fake copies of the inputs (no real compute), with grad
    enabled as in training; the block is left as it was (its hooks are removed).
    """
    scopes = Scopes(block)
    try:
        with _disable_current_modes():
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_args, fake_kwargs = tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
            recorder = _Recorder(Namer(scopes))
            with mode, torch.enable_grad(), recorder:
                block(*fake_args, **fake_kwargs)
    finally:
        scopes.remove()
    return recorder.names
