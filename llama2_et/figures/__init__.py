"""Diagrams the book draws: matplotlib, so every figure is rebuilt from code when a chapter runs.

A diagram is drawn on a `canvas` whose data units are inches, with `box`es joined by `arrow`s.
The modules of this package draw one subject each; a chapter calls them and shows the figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

# One palette for every diagram: a reader learns the colours once.
COLORS = {
    "tensor": "#dbe9f6",  # activations and inputs
    "weight": "#fde7c9",  # parameters
    "cache": "#d9f0d3",  # the KV cache
    "op": "#eeeeee",  # computations
    "delegate": "#c6dbef",  # work handed to a backend (XNNPACK)
    "portable": "#fcbba1",  # ExecuTorch's portable kernels
    "accent": "#08519c",
}

# Diagrams are laid out in inches about 7 wide and shown this much larger, text included, so that at
# the notebooks' 80 dpi they fill most of the book's column (about 700 px) and their smallest text
# (7 pt) is 9 px tall.
BOOK_SCALE = 1.25


def canvas(width: float, height: float):
    """A blank figure of width x height inches whose axes use inches as data units."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str = "", kind: str = "op", **text_kw):
    """A rounded box with its lower-left corner at (x, y), filled with the colour of `kind`."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.06",
            facecolor=COLORS[kind],
            edgecolor="0.35",
            linewidth=0.8,
        )
    )
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", **{"fontsize": 9, **text_kw})
    return (x, y, w, h)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", **kw):
    """An arrow from start to end, optionally labelled at its middle."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=10,
            color="0.25",
            linewidth=0.9,
            shrinkA=1,
            shrinkB=1,
            **kw,
        )
    )
    if text:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(mid[0] + 0.05, mid[1], text, fontsize=8, va="center", color="0.25")


def swatch(kind: str, label: str, edgecolor: str = "0.35") -> Rectangle:
    """A legend entry: a square in the colour of `kind`."""
    return Rectangle((0, 0), 1, 1, facecolor=COLORS[kind], edgecolor=edgecolor, label=label)


def enlarge(fig, factor: float):
    """fig with its size and every text's font scaled by factor: drawn in the units above, shown larger."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(width * factor, height * factor)
    for text in fig.findobj(lambda artist: hasattr(artist, "set_fontsize") and hasattr(artist, "get_text")):
        text.set_fontsize(text.get_fontsize() * factor)
    return fig
