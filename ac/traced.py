"""The "traced_eager" torch.compile backend: aot_eager's graphs, each op called directly.

Why: the traced-eager path (op-SAC and memory_budget without a per-op dispatch mode)
is meant to cost little more than eager no AC, and what it adds is Python. aot_eager
runs its forward and backward graphs as FX-generated Python code that calls every
aten op through `OpOverload.__call__`, one more Python frame per op call (about a
thousand a step on moe-small). This backend is aot_eager (same tracing, partitioner
and eager kernels, so the same results bit for bit) with each such call target in
its graphs replaced by the op's underlying C++ callable: op-SAC on moe-small steps
about 4 % faster than under aot_eager (bench/README.md).

torch._dynamo is imported only when a block is compiled, so importing `ac` stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

NAME = "traced_eager"  # the `ACConfig.compile_backend` value that selects this backend


def backend_for(name: str) -> str | Callable[..., Any]:
    """What `torch.compile(backend=...)` takes for `ACConfig.compile_backend=name`."""
    return traced_eager if name == NAME else name


def traced_eager(gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable[..., Any]:
    """The backend: aot_eager, with forward and backward graphs that call ops directly."""
    from torch._dynamo.backends.debugging import aot_eager

    return aot_eager(gm, example_inputs, fw_compiler=_direct_nop, bw_compiler=_direct_nop, **kwargs)


def _direct_nop(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """aot_eager's compiler (`boxed_nop`: run the graph's code) after pointing each op call
    past `OpOverload.__call__`."""
    from torch._dynamo.backends.debugging import boxed_nop

    for node in gm.graph.nodes:
        if node.op == "call_function" and type(node.target) is torch._ops.OpOverload:
            node.target = _direct(node.target)
    gm.recompile()
    return boxed_nop(gm, example_inputs)


@functools.cache
def _direct(op: torch._ops.OpOverload) -> Callable[..., Any]:
    """`op`'s C++ callable, named so FX's code generator binds it as a global of the graph
    code (an `OpOverload` is printed as `torch.ops...` and called through its wrapper).
    A plain `functools.partial`: a subclass would lose vectorcall on Python 3.11. A torch
    build whose OpOverload has no `_op` keeps the OpOverload: correct, just slower."""
    call = getattr(op, "_op", None)
    if call is None:
        return op
    direct = functools.partial(call)
    direct.__name__ = str(op).replace(".", "_")  # e.g. aten_mm_default
    direct.__module__ = __name__
    return direct
