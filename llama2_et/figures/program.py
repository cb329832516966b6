"""A real .pte drawn from its own bytes: the forward method's execution plan and its memory plan.

`read_pte` deserializes the file with ExecuTorch's own serializer. `instructions` lists the
plan's chain in order (a delegate call or a kernel call); `planned_tensors` gives every tensor the
memory planner placed in the arena, with its byte range and its lifetime in instruction indices
(from the first to the last instruction that names it). The two figures draw exactly these lists.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from matplotlib.patches import Rectangle

from .. import integrity
from . import COLORS, swatch

# bytes per element of ExecuTorch's ScalarType values that a planned tensor of ours can have
_ELEMENT_BYTES = {"BYTE": 1, "CHAR": 1, "SHORT": 2, "INT": 4, "LONG": 8, "HALF": 2, "FLOAT": 4, "BOOL": 1}


def read_pte(path: str | Path):
    """The deserialized file (ExecuTorch's PTEFile: .program, .mutable_data, .named_data).

    The integrity trailer that llama2_et's export appends (integrity.py) is stripped first.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    path = Path(path)
    data = path.read_bytes()
    if integrity.is_sealed(path):
        data = data[: -integrity.SEAL_SIZE]
    return deserialize_pte_binary(data)


def file_bytes(pte, size: int | None = None) -> dict[str, int]:
    """Where a file's bytes go: constants for kernels, the delegates' weights and graphs, initial state.

    Given the file's size, "the rest" is what none of those hold: the program itself (its values,
    instructions and metadata methods), alignment padding and, in a sealed file, the trailer.
    """
    program = pte.program
    named = pte.named_data.buffers if pte.named_data is not None else []
    parts = {
        "constants read by kernels": sum(len(b.storage) for b in program.constant_buffer),
        "delegate weights": sum(len(b) for b in named),
        "delegate graphs": sum(len(b.data) for b in program.backend_delegate_data),
        "initial mutable state": sum(len(b.storage) for b in pte.mutable_data or []),
    }
    if size is not None:
        parts["the rest"] = size - sum(parts.values())
    return parts


def forward_plan(program):
    """The execution plan of the program's `forward` method."""
    plans = {plan.name: plan for plan in program.execution_plan}
    if "forward" not in plans:
        raise ValueError(f"the program has no forward method (methods: {', '.join(sorted(plans))})")
    return plans["forward"]


@dataclass(frozen=True)
class Instruction:
    """One instruction of the chain: a delegate call (backend id) or a kernel call (operator name)."""

    kind: str  # "delegate" or "kernel"
    name: str
    args: tuple[int, ...]  # the value indices it reads and writes


def instructions(plan) -> list[Instruction]:
    """The forward chain's instructions in execution order."""
    listed = []
    for instruction in plan.chains[0].instructions:
        call = instruction.instr_args
        kind = type(call).__name__
        if kind == "DelegateCall":
            listed.append(Instruction("delegate", plan.delegates[call.delegate_index].id, tuple(call.args)))
        elif kind == "KernelCall":
            name = plan.operators[call.op_index].name.removeprefix("aten::")
            listed.append(Instruction("kernel", name, tuple(call.args)))
        else:  # moves, jumps and frees carry no operator
            listed.append(Instruction("other", kind, ()))
    return listed


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor the memory planner placed in the arena: its bytes and the instructions that use it."""

    value: int  # index in the plan's values
    initial: int | None  # for a mutable buffer the file initializes, its content's index in mutable_data
    sizes: tuple[int, ...]  # upper bounds for a dynamic tensor
    offset: int  # byte offset in its arena
    nbytes: int
    first: int  # first instruction that uses it (-1: a method input, live before the first)
    last: int  # last instruction that uses it (len(instructions): a method output)

    @property
    def is_cache(self) -> bool:
        """export_pte initializes exactly the mutable buffers k_cache and v_cache (the KV cache)."""
        return self.initial is not None


def planned_tensors(plan) -> list[PlannedTensor]:
    """Every memory-planned tensor of the plan, with its byte range and lifetime.

    A planned tensor with a data buffer is a mutable buffer whose initial content the file stores
    (ExecuTorch's InitializedMutableBufferPass): state kept from one call to the next, so it is live
    for the whole method whatever instructions touch it.
    """
    chain = instructions(plan)
    uses: dict[int, list[int]] = {}
    for i, instruction in enumerate(chain):
        for value in instruction.args:
            uses.setdefault(value, []).append(i)
    inputs, outputs = set(plan.inputs), set(plan.outputs)
    planned = []
    for index, evalue in enumerate(plan.values):
        tensor = evalue.val
        if type(tensor).__name__ != "Tensor" or tensor.allocation_info is None:
            continue
        initial = tensor.data_buffer_idx or None  # 0: no stored content
        used = uses.get(index, [])
        first = -1 if index in inputs or not used else min(used)
        last = len(chain) if index in outputs or not used else max(used)
        if initial is not None:  # state kept across calls
            first, last = -1, len(chain)
        planned.append(
            PlannedTensor(
                value=index,
                initial=initial,
                sizes=tuple(tensor.sizes),
                offset=tensor.allocation_info.memory_offset,
                nbytes=math.prod(tensor.sizes) * _ELEMENT_BYTES[tensor.scalar_type.name],
                first=first,
                last=last,
            )
        )
    return planned


# A colour per kernel: the most frequent kernels of a chain get one each, the rest share OTHER_KERNELS.
KERNEL_PALETTE = (
    "#fb8072", "#fdb462", "#b3de69", "#bc80bd", "#ffed6f",
    "#8dd3c7", "#fccde5", "#e5c494", "#bebada", "#a6761d",
)  # fmt: skip
OTHER_KERNELS = "#d9d9d9"


def kernel_colours(chain: list[Instruction], most: int = len(KERNEL_PALETTE)) -> dict[str, str]:
    """A colour for each of the `most` most frequent kernels of the chain (by name), most frequent first."""
    counts = Counter(i.name for i in chain if i.kind == "kernel")
    ranked = sorted(counts, key=lambda name: (-counts[name], name))[:most]
    return dict(zip(ranked, KERNEL_PALETTE, strict=False))


def _short(name: str) -> str:
    """A kernel's name as a legend shows it: no namespace (`aten::`, `quantized_decomposed::`)."""
    return name.split("::")[-1]


def execution_plan_figure(plan, title: str = ""):
    """The forward chain as cells in order: delegate calls in one colour, each frequent kernel in its own.

    The legend names the kernel of every colour with its count; kernels outside the palette share grey.
    """
    import matplotlib.pyplot as plt

    chain = instructions(plan)
    colours = kernel_colours(chain)
    per_row = min(50, len(chain))
    rows = math.ceil(len(chain) / per_row)
    legend_rows = math.ceil((len(colours) + 2) / 4)
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.32 * rows + (0.9 if rows == 1 else 0) + 0.22 * legend_rows))
    for i, instruction in enumerate(chain):
        row, col = divmod(i, per_row)
        if instruction.kind == "delegate":
            colour = COLORS["delegate"]
        else:
            colour = colours.get(instruction.name, OTHER_KERNELS)
        ax.add_patch(Rectangle((col, -row), 0.9, 0.8, facecolor=colour, edgecolor="0.35", lw=0.5))
        if rows == 1:  # a short chain: every instruction named under its cell
            label = "XNNPACK" if instruction.kind == "delegate" else _short(instruction.name)
            ax.text(col + 0.45, -0.15, label, ha="center", va="top", rotation=90, fontsize=6.5)
    ax.set_xlim(-0.2, per_row + 0.1)
    ax.set_ylim(-rows - 1.6 if rows == 1 else -rows + 0.7, 1.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(
        handles=_plan_legend(chain, colours),
        loc="lower left",
        bbox_to_anchor=(0, 1.0),
        ncol=4,
        fontsize=7,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.2,
    )
    ax.set_title(
        title or f"forward: {len(chain)} instructions, in order",
        fontsize=9,
        loc="left",
        pad=4 + 14 * legend_rows,
    )
    return fig


def _plan_legend(chain: list[Instruction], colours: dict[str, str]) -> list[Rectangle]:
    """Legend entries: the delegate calls, each coloured kernel, then the kernels that share grey."""
    counts = Counter(i.name for i in chain if i.kind == "kernel")
    delegates = sum(i.kind == "delegate" for i in chain)
    entries = [swatch("delegate", f"XNNPACK delegate call ×{delegates}")] if delegates else []
    for name, colour in colours.items():
        entries.append(
            Rectangle(
                (0, 0), 1, 1, facecolor=colour, edgecolor="0.35", label=f"{_short(name)} ×{counts[name]}"
            )
        )
    rest = {name: n for name, n in counts.items() if name not in colours}
    if rest:
        label = f"{len(rest)} other kernels ×{sum(rest.values())}"
        entries.append(Rectangle((0, 0), 1, 1, facecolor=OTHER_KERNELS, edgecolor="0.35", label=label))
    return entries


def memory_plan_figure(plan, title: str = ""):
    """Each planned tensor as a bar: its lifetime (instruction index) across, its arena bytes up."""
    import matplotlib.pyplot as plt

    chain = instructions(plan)
    tensors = planned_tensors(plan)
    fig, ax = plt.subplots(figsize=(8, 4))
    for t in tensors:
        kind = "cache" if t.is_cache else "tensor"
        ax.add_patch(
            Rectangle(
                (t.first - 0.5, t.offset / 1024),
                t.last - t.first + 1,
                max(t.nbytes, 1) / 1024,
                facecolor=COLORS[kind],
                edgecolor="0.3" if t.is_cache else COLORS["accent"],
                lw=0.4,
            )
        )
    top = max((t.offset + t.nbytes for t in tensors), default=1) / 1024
    ax.set_xlim(-1.5, len(chain) + 0.5)
    ax.set_ylim(0, top * 1.02)
    ax.set_xlabel("instruction index (-1: before the first, as an input)")
    ax.set_ylabel("arena offset (KiB)")
    cache = sum(t.is_cache for t in tensors)
    legend = [
        swatch("cache", f"KV cache buffer ({cache})", edgecolor="0.3"),
        swatch("tensor", f"other ({len(tensors) - cache})", edgecolor=COLORS["accent"]),
    ]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(title or f"memory plan: {len(tensors)} planned tensors", fontsize=9, loc="left")
    fig.tight_layout()
    return fig
