"""The three program designs side by side: what enters the .pte, and where the tables are sliced.

The names are the package's (`llama2_et.designs`): narrow, preproc and gather.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from ..designs import DEFAULT_DESIGN, SIGNATURES
from . import BOOK_SCALE, COLORS, arrow, box, canvas, enlarge

ROW_HEIGHT = 1.75  # inches per design
PROGRAM_X = 2.35  # where the .pte's frame starts; the caller is left of it
SLICE = "#fdd0a2"  # the step that picks the table rows of the call's positions


def _program_frame(ax, y: float, design: str) -> None:
    """The dashed frame of the exported program, labelled with its forward's inputs (contract.py)."""
    ax.add_patch(
        FancyBboxPatch(
            (PROGRAM_X, y + 0.1),
            7.2 - PROGRAM_X - 0.1,
            ROW_HEIGHT - 0.3,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor="none",
            edgecolor=COLORS["accent"],
            linestyle="--",
            linewidth=1.0,
        )
    )
    ax.text(
        PROGRAM_X + 0.08,
        y + ROW_HEIGHT - 0.38,
        f".pte  forward({', '.join(SIGNATURES[design].names)})"
        + ("  (the default)" if design == DEFAULT_DESIGN else ""),
        fontsize=7.5,
        color=COLORS["accent"],
    )


def _slice_box(ax, x: float, y: float, w: float, h: float, text: str) -> tuple[float, float, float, float]:
    """A box in the colour of the slicing step."""
    placed = box(ax, x, y, w, h, text, "op", fontsize=7.5)
    ax.patches[-1].set_facecolor(SLICE)
    return placed


def _tail(ax, y: float, x_from: float) -> None:
    """The model with its cache and the logits it returns, from x_from to the frame's right end."""
    box(ax, 5.45, y + 0.25, 1.0, 0.6, "Transformer\n+ KV cache", "op", fontsize=7.5)
    arrow(ax, (x_from, y + 0.45), (5.45, y + 0.45))
    box(ax, 6.55, y + 0.35, 0.5, 0.4, "logits\n(1, V)", "tensor", fontsize=7)
    arrow(ax, (6.45, y + 0.55), (6.55, y + 0.55))


def _tokens(ax, y: float) -> None:
    """tokens (1, L) from the caller straight to the model."""
    box(ax, 0.1, y + 0.95, 1.55, 0.3, "tokens (1, L)", "tensor", fontsize=7.5)
    arrow(ax, (1.65, y + 1.1), (5.45, y + 0.78))


def _start_then_slice(ax, y: float, first: str, link: str, slicing: str) -> None:
    """input_pos (1,) from the caller, a first step in the graph, then the slicing of the tables."""
    _tokens(ax, y)
    box(ax, 0.1, y + 0.3, 1.55, 0.3, "input_pos (1,): start p", "tensor", fontsize=7.5)
    box(ax, 2.45, y + 0.2, 1.1, 0.5, first, "op", fontsize=7.5)
    arrow(ax, (1.65, y + 0.45), (2.45, y + 0.45))
    _slice_box(ax, 4.05, y + 0.2, 1.2, 0.5, slicing)
    arrow(ax, (3.55, y + 0.45), (4.05, y + 0.45))
    ax.text(3.8, y + 0.73, link, ha="center", va="bottom", fontsize=6.5, color="0.25")
    _tail(ax, y, 5.25)


def _narrow(ax, y: float) -> None:
    _program_frame(ax, y, "narrow")
    _start_then_slice(ax, y, "start = .item()\ntorch._check", "a value", "narrow(cos, sin,\nmask, start, L)")


def _preproc(ax, y: float) -> None:
    _program_frame(ax, y, "preproc")
    _tokens(ax, y)
    _slice_box(ax, 0.1, y + 0.2, 1.55, 0.5, "TableWindows.window(p, L)\nin the caller")
    box(
        ax,
        2.45,
        y + 0.2,
        2.8,
        0.5,
        "inputs: cos, sin (L, Dh/2),\nmask (L, W), input_pos (L,)",
        "tensor",
        fontsize=7.5,
    )
    arrow(ax, (1.65, y + 0.45), (2.45, y + 0.45))
    _tail(ax, y, 5.25)


def _gather(ax, y: float) -> None:
    _program_frame(ax, y, "gather")
    _start_then_slice(
        ax,
        y,
        "positions =\np + arange(L)",
        "L: a shape",
        "index_select(cos,\nsin, mask, positions)",
    )


DESIGN_ROWS = {
    "narrow": ("narrow: NarrowProgram", _narrow),
    "preproc": ("preproc: PreprocProgram", _preproc),
    "gather": ("gather: the Transformer itself", _gather),
}


def design_flows() -> Figure:
    """narrow, preproc, gather, top to bottom: caller on the left, the exported program on the right."""
    fig, ax = canvas(7.2, ROW_HEIGHT * len(DESIGN_ROWS) + 0.3)
    ax.text(0.9, ROW_HEIGHT * len(DESIGN_ROWS) + 0.1, "caller", ha="center", fontsize=8.5, weight="bold")
    ax.text(
        4.7, ROW_HEIGHT * len(DESIGN_ROWS) + 0.1, "exported program", ha="center", fontsize=8.5, weight="bold"
    )
    for i, (title, draw) in enumerate(DESIGN_ROWS.values()):
        y = ROW_HEIGHT * (len(DESIGN_ROWS) - 1 - i)
        ax.text(0.1, y + ROW_HEIGHT - 0.2, title, fontsize=9, weight="bold", va="center")
        draw(ax, y)
    return enlarge(fig, BOOK_SCALE)
