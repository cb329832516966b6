"""Backends: what lowering to a target needs, one registry entry each.

A backend is its partitioners (which subgraphs a delegate takes over), the source transformations
it wants (transforms.py) and its edge compile config. Adding another delegate (Vulkan, Core ML,
...) is one more entry here; export.py reads nothing else about backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .model import Transformer
from .transforms import attention_as_matmuls, attention_over_filled_cache, rms_norm_as_linear


@dataclass(frozen=True)
class Backend:
    """How to lower for one target."""

    name: str
    description: str
    partitioners: Callable[[], list]  # fresh partitioner objects for one export
    transforms: tuple[Callable[[Transformer], None], ...] = ()
    preserve_ops: tuple = ()  # aten ops to_edge keeps whole instead of decomposing


def _xnnpack_partitioners() -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


BACKENDS = {
    "xnnpack": Backend(
        "xnnpack",
        "XNNPACK delegate: optimized CPU kernels for the subgraphs it accepts",
        _xnnpack_partitioners,
        transforms=(rms_norm_as_linear, attention_as_matmuls),
        preserve_ops=(torch.ops.aten.linear.default,),  # XNNPACK's linear takes it whole
    ),
    "xnnpack-filled": Backend(
        "xnnpack-filled",
        "XNNPACK, with attention over the filled cache positions and the cache writes in llama2-et's "
        "own kernels (the C++ runner has them; Python loads them with kernels.load_kernel_library)",
        _xnnpack_partitioners,
        transforms=(rms_norm_as_linear, attention_over_filled_cache),
        preserve_ops=(torch.ops.aten.linear.default,),
    ),
    "portable": Backend(
        "portable",
        "ExecuTorch's portable kernels only: the reference every op has",
        list,
        # keep linear whole: its portable kernel reads the weight as stored, while decomposed it
        # becomes permute_copy + mm and copies every weight on every call
        preserve_ops=(torch.ops.aten.linear.default,),
    ),
}


def backend(name: str) -> Backend:
    """The registry entry of a backend, or a ValueError listing them."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
