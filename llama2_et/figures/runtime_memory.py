"""Where a loaded .pte lives in memory: Runtime, Program, Method, the planned arena and the delegate's.

`runtime_memory_figure` draws the three objects of `executorch.runtime` with what `load_program`
and `load_method` allocate (measured with `llama2_et.bench.memory.heap_in_use`) and the sizes the
file's memory plan declares.
"""

from __future__ import annotations

from . import BOOK_SCALE, arrow, box, canvas, enlarge


def _size(nbytes: int | None) -> str:
    return "(not measured)" if nbytes is None else f"{nbytes:,} bytes"


def runtime_memory_figure(
    pte_name: str,
    n_methods: int,
    arena_bytes: int,
    cache_bytes: int,
    cache_buffers: int,
    program_alloc: int | None,
    method_alloc: int | None,
    delegate_weight_bytes: int,
):
    """Runtime -> Program -> Method, and the memory each load allocates, labelled with measured bytes.

    program_alloc and method_alloc are what load_program and load_method allocated (heap_in_use
    around each), None where they could not be measured.
    """
    fig, ax = canvas(10.0, 3.3)
    y, h = 2.2, 1.0
    runtime = box(
        ax, 0.1, y, 2.1, h, "Runtime.get()\nkernels and backends\nregistered once", kind="op", fontsize=8
    )
    program = box(
        ax,
        2.9,
        y,
        3.2,
        h,
        f"Program: load_program(path)\n{pte_name}\n{n_methods} methods",
        kind="tensor",
        fontsize=8,
    )
    method = box(
        ax, 6.8, y, 3.0, h, 'Method: load_method("forward")\nthe forward method', kind="delegate", fontsize=8
    )
    for left, right in ((runtime, program), (program, method)):
        arrow(ax, (left[0] + left[2], y + h / 2), (right[0], y + h / 2))

    bar_top = _arena(ax, arena_bytes, cache_bytes, cache_buffers, program_alloc)
    arrow(ax, (program[0] + 0.4, y), (program[0] + 0.4, bar_top + 0.42))

    delegate = box(
        ax,
        6.8,
        0.25,
        3.0,
        1.25,
        f"load_method allocated\n{_size(method_alloc)}\n(XNNPACK's weights take\n"
        f"{_size(delegate_weight_bytes)} in the file)",
        kind="weight",
        fontsize=7.5,
    )
    arrow(ax, (method[0] + 1.8, y), (delegate[0] + 1.45, delegate[1] + delegate[3]))
    return enlarge(fig, BOOK_SCALE)


def _arena(ax, arena_bytes: int, cache_bytes: int, cache_buffers: int, program_alloc: int | None) -> float:
    """The planned arena as a bar to scale (KV cache first, then the rest); returns its top."""
    x0, width, bar_y, bar_h = 0.1, 6.2, 0.6, 0.6
    cache_w = width * cache_bytes / arena_bytes
    box(ax, x0, bar_y, cache_w, bar_h, "", kind="cache")
    box(ax, x0 + cache_w, bar_y, width - cache_w, bar_h, "", kind="tensor")
    ax.text(
        x0 + cache_w + 0.1,
        bar_y + bar_h / 2,
        "activations, inputs, logits\n(reused between instructions)",
        va="center",
        fontsize=7.5,
    )
    ax.text(
        x0,
        bar_y - 0.12,
        f"KV cache: {cache_buffers} mutable buffers, {_size(cache_bytes)}",
        va="top",
        fontsize=7.5,
    )
    ax.text(
        x0,
        bar_y + bar_h + 0.12,
        f"planned memory arena: {_size(arena_bytes)} (load_program allocated {_size(program_alloc)})",
        va="bottom",
        fontsize=8,
    )
    return bar_y + bar_h
