"""What `torch.export` keeps of a model's Python: a branch, a strided view of the mask, a `torch._check`.

Each figure is drawn from the objects the chapter on dynamism builds (exported programs, the mask
tensor, counts of assert nodes), so its labels are the numbers the chapter prints.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from . import BOOK_SCALE, COLORS, arrow, box, canvas, enlarge

# one colour per exported program: its source lines and its graph share it
PROGRAM_COLORS = ("#9ecae1", "#fdae6b")
LINE = 0.26  # inches per source line
CHAR = 0.069  # inches per character of 8 pt monospace


def graph_ops(program) -> list[tuple[str, str]]:
    """(operator, source line it was traced from) for each call in an exported program's graph."""
    ops = []
    for node in program.graph.nodes:
        if node.op == "call_function":
            name = str(node.target).replace("aten.", "").replace(".default", "")
            trace = node.meta.get("stack_trace") or ""
            ops.append((name, trace.strip().splitlines()[-1].strip() if trace.strip() else ""))
    return ops


def branch_pruning(source: str, programs: dict[str, object]) -> Figure:
    """A forward's source beside the graph of each export: each op joined to the line it came from.

    source: the text of the forward (`inspect.getsource`); programs: label -> ExportedProgram.
    Lines that no graph holds (the `if` itself) were run by Python while tracing and left no node.
    """
    lines = [line.split("  #")[0].rstrip() for line in source.strip("\n").splitlines()]
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    lines = [line[indent:] for line in lines]
    graphs = {label: graph_ops(program) for label, program in programs.items()}
    code_right = 0.3 + CHAR * max(map(len, lines)) + 0.15
    graph_x = code_right + 0.65
    width = graph_x + 1.5 * max(map(len, graphs.values())) + 1.0
    height = max(LINE * len(lines) + 1.0, 0.95 * len(programs) + 0.6)
    fig, ax = canvas(width, height)
    top = height - 0.45
    ax.text(0.15, height - 0.22, "model source (Python)", fontsize=8.5, weight="bold")
    box(ax, 0.1, top - LINE * len(lines) - 0.05, code_right - 0.1, LINE * len(lines) + 0.1, kind="op")
    line_y = {}
    for i, line in enumerate(lines):
        line_y.setdefault(line.strip(), top - LINE * (i + 0.5))
        ax.text(0.25, top - LINE * (i + 0.5), line, fontsize=8, family="monospace", va="center")
    ax.text(graph_x, height - 0.22, "exported graph (ATen ops)", fontsize=8.5, weight="bold")
    for k, (label, ops) in enumerate(graphs.items()):
        color = PROGRAM_COLORS[k % len(PROGRAM_COLORS)]
        row_y = top - 0.95 * k - 0.55  # lower edge of the row's boxes
        ax.text(graph_x, row_y + 0.45, label, fontsize=7.5, family="monospace")
        x = graph_x
        for name, traced_from in ops:
            box(ax, x, row_y, 1.3, 0.36, name, "op", fontsize=8, family="monospace")
            ax.patches[-1].set_facecolor(color)
            if traced_from in line_y:
                y = line_y[traced_from]
                ax.add_patch(
                    Rectangle((0.15, y - LINE / 2 + 0.02), code_right - 0.2, LINE - 0.04, color=color)
                )
                arrow(ax, (code_right, y), (x, row_y + 0.18), linestyle="--")
            x += 1.5
        box(ax, x, row_y, 0.75, 0.36, "output", "tensor", fontsize=8)
        arrow(ax, (x - 0.2, row_y + 0.18), (x, row_y + 0.18))
    untraced = [line for line in line_y if line.startswith("if ")]
    if untraced:
        ax.text(
            0.15,
            top - LINE * len(lines) - 0.3,
            f"`{untraced[0]}` left no node:\nPython decided it while tracing",
            fontsize=7.5,
            color="0.3",
            va="top",
        )
    return enlarge(fig, BOOK_SCALE)


def _storage_row(ax, y: float, title: str, spans: list[tuple[str, bool, float]], note: str) -> None:
    """One tensor's reads in the flat storage: spans of (label, read?, width in inches), left to right."""
    ax.text(0.05, y + 0.62, title, fontsize=8, family="monospace", weight="bold")
    x = 0.05
    for label, read, width in spans:
        box(ax, x, y, width - 0.05, 0.42, label, "tensor" if read else "op", fontsize=7)
        if not read:
            ax.patches[-1].set_facecolor("white")
        x += width
    ax.text(0.05, y - 0.22, note, fontsize=7.5, color="0.25")


def _mask_panel(left, mask: torch.Tensor, seq_len: int, start_pos: int) -> None:
    """The whole mask, its corner mask[:L, :L] outlined and the rows narrow(0, p, L) shaded."""
    n = mask.shape[0]
    left.imshow((mask != 0).float().numpy(), cmap="Greys", vmin=-0.6, vmax=2.5, interpolation="nearest")
    left.add_patch(Rectangle((-0.5, -0.5), seq_len, seq_len, fill=False, edgecolor=COLORS["accent"], lw=1.6))
    left.add_patch(Rectangle((-0.5, start_pos - 0.5), n, seq_len, color=PROGRAM_COLORS[1], alpha=0.8))
    left.annotate(
        "mask[:L, :L]",
        (seq_len, seq_len / 2),
        (n * 0.12, n * 0.3),
        color=COLORS["accent"],
        va="top",
        fontsize=7.5,
        arrowprops={"arrowstyle": "-|>", "color": COLORS["accent"]},
    )
    left.text(n * 0.04, start_pos + seq_len + n * 0.08, "narrow(0, p, L)", fontsize=7.5, color="#a63603")
    left.set_title(f"causal mask ({n}, {n}): light = 0, dark = −∞", fontsize=8)
    left.set_xlabel("column (key position)", fontsize=7.5)
    left.set_ylabel("row (query position)", fontsize=7.5)
    left.tick_params(labelsize=7)


def mask_window(mask: torch.Tensor, seq_len: int, start_pos: int) -> Figure:
    """The (Lm, Lm) causal mask with two views of it, and the floats each view reads in memory.

    `mask[:L, :L]`, the no-cache program's mask, reads the first L floats of L rows 512 floats apart;
    `mask.narrow(0, p, L)`, a cached call's rows, reads L whole rows: one contiguous run.
    """
    n = mask.shape[0]
    if not 1 <= seq_len < n or not 0 <= start_pos <= n - seq_len:
        raise ValueError(f"seq_len={seq_len} at start_pos={start_pos} must fit inside {n} mask rows")
    corner, rows = mask[:seq_len, :seq_len], mask.narrow(0, start_pos, seq_len)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.0), gridspec_kw={"width_ratios": [1, 1.75]})
    _mask_panel(left, mask, seq_len, start_pos)
    right.set_xlim(0, 4.6)
    right.set_ylim(0, 3.0)
    right.axis("off")
    width = corner.stride(0)
    _storage_row(
        right,
        1.9,
        f"mask[:{seq_len}, :{seq_len}]",
        [
            (f"row 0: {seq_len} read", True, 0.9),
            (f"{width - seq_len} skipped", False, 0.9),
            (f"row 1: {seq_len} read", True, 0.9),
            (f"{width - seq_len} skipped", False, 0.9),
            ("…", False, 0.45),
        ],
        f"stride {tuple(corner.stride())}, offset {corner.storage_offset()}, "
        f"contiguous: {corner.is_contiguous()}",
    )
    _storage_row(
        right,
        0.55,
        f"mask.narrow(0, {start_pos}, {seq_len})",
        [
            (f"rows 0..{start_pos - 1}", False, 1.05),
            (f"rows {start_pos}..{start_pos + seq_len - 1}: {seq_len} × {width} floats", True, 2.3),
            ("rest", False, 0.6),
        ],
        f"stride {tuple(rows.stride())}, offset {rows.storage_offset()} = {start_pos} × {width}, "
        f"contiguous: {rows.is_contiguous()}",
    )
    right.set_title("the floats each view reads, in memory order", fontsize=8)
    fig.tight_layout()
    return enlarge(fig, BOOK_SCALE)


def check_path(asserts: dict[str, int], checks: list[str]) -> Figure:
    """Where the `torch._check`s of a forward live at each stage.

    asserts: 'exported', 'edge', 'executorch' -> count of _assert_scalar nodes; checks: the
    conditions of the forward's `torch._check` calls, in source order.
    """
    missing = {"exported", "edge", "executorch"} - set(asserts)
    if missing:
        raise ValueError(f"asserts needs a count for {sorted(missing)}")
    if not checks:
        raise ValueError("checks needs the condition of at least one torch._check")
    lines = [f"torch._check({condition})" for condition in checks]
    fig, ax = canvas(7.2, 3.2)
    source_w = 0.3 + 0.065 * max(map(len, lines))
    source_h = 0.2 + 0.2 * len(lines)
    ax.text(0.1, 3.05, f"model source: {len(checks)} checks", fontsize=8, weight="bold", va="center")
    box(
        ax, 0.1, 2.85 - source_h, source_w, source_h, "\n".join(lines), "op", fontsize=7.5, family="monospace"
    )
    box(ax, 0.1, 0.2, 1.45, 0.75, "eager call\nraises\nRuntimeError", "tensor", fontsize=7.5)
    arrow(ax, (0.82, 2.85 - source_h), (0.82, 0.95), "run")
    stages = [
        ("torch.export", "exported", "ExportedProgram.module()\nraises"),
        ("to_edge", "edge", "Edge program"),
        ("to_executorch", "executorch", ".pte: no node\nchecks the position"),
    ]
    x = 1.85
    for step, stage, effect in stages:
        if stage == "exported":  # the first stage traces the source above it
            arrow(ax, (x + 0.15, 2.85 - source_h), (x + 0.15, 1.55))
        else:
            arrow(ax, (x - 0.4, 1.3), (x, 1.3))
        ax.text(x + 0.25, 1.7, step, fontsize=7.5, family="monospace")
        kind = "cache" if asserts[stage] else "portable"
        box(ax, x, 1.05, 1.35, 0.5, f"{asserts[stage]} _assert_scalar\nnodes", kind, fontsize=7.5)
        box(ax, x, 0.2, 1.35, 0.5, effect, "op", fontsize=7)
        arrow(ax, (x + 0.68, 1.05), (x + 0.68, 0.7))
        x += 1.75
    return enlarge(fig, BOOK_SCALE)
