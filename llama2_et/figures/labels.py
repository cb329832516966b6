"""Labels for scattered points that overlap neither each other, nor the points, nor lines, nor the edges.

Each label tries positions around its point, nearest first (right, left, then higher and lower
rows joined to the point by a thin leader line), and takes the first whose box is free. Call it
once the figure's layout is final (after `tight_layout` and the axis limits), since it measures
the boxes as they will be drawn. `zoom_panel` gives a crowded group of points an axes of its own.
"""

from __future__ import annotations

import numpy as np
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# offsets in points (dx, dy): beside the point first, then rows above and below it, right before left
_ROWS = (0, 11, -11, 22, -22, 33, -33, 44, -44, 55, -55)
OFFSETS = [(dx, dy) for dy in _ROWS for dx in (7, -7)] + [(dx, dy) for dy in _ROWS for dx in (40, -40)]
POINT_RADIUS_PX = 5
LINE_STEP_PX = 3  # a line is avoided as a chain of small boxes this far apart


def _overlap(box: Bbox, others: list[Bbox]) -> float:
    """Area box shares with the others, in square pixels."""
    total = 0.0
    for other in others:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        total += max(w, 0) * max(h, 0)
    return total


def line_boxes(line) -> list[Bbox]:
    """A drawn line (Line2D) as small pixel boxes along its path, for labels to keep off it."""
    points = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
    boxes = []
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        n = max(int(np.hypot(x1 - x0, y1 - y0) / LINE_STEP_PX), 1)
        for t in np.linspace(0, 1, n + 1):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            boxes.append(Bbox.from_extents(x - 1, y - 1, x + 1, y + 1))
    return boxes


def place_labels(
    ax, xs, ys, labels: list[str], avoid: tuple = (), lines: tuple = (), fontsize: float = 8
) -> list:
    """Annotate point (xs[i], ys[i]) with labels[i] where the label's box is free; returns the annotations.

    `avoid` holds other artists (a line's label, a legend) whose boxes labels must not cover;
    `lines` holds drawn lines (Line2D) that must not run through a label.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    r = POINT_RADIUS_PX
    taken = [
        Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in to_px(list(zip(xs, ys, strict=True)))
    ]
    taken += [artist.get_window_extent(renderer) for artist in avoid]
    taken += [box for line in lines for box in line_boxes(line)]
    inside = ax.get_window_extent(renderer)
    placed = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        best = None
        for dx, dy in OFFSETS:
            note = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx > 0 else "right",
                va="center",
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85},
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3}
                if dy or abs(dx) > 10
                else None,
            )
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).expanded(1.0, 1.2)  # the text, not its leader
            outside = box.x0 < inside.x0 or box.x1 > inside.x1 or box.y0 < inside.y0 or box.y1 > inside.y1
            cost = _overlap(box, taken) + (1e9 if outside else 0)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note, box)
            else:
                note.remove()
            if cost == 0:
                break
        taken.append(best[2])
        placed.append(best[1])
    return placed


def zoom_panel(ax, zoom, xs, ys, pad: float = 0.25):
    """Frame points (xs, ys) of `ax` in a grey box and show the same region, enlarged, in axes `zoom`.

    Whatever `ax` draws must already be drawn in `zoom` too; this sets the limits of `zoom` (the
    points' span widened by `pad` of it on each side) and titles it. Returns the box's artist.
    """
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) * pad or 0.05 * x0, (y1 - y0) * pad or 0.002 * y0
    zoom.set(xlim=(x0 - dx, x1 + dx), ylim=(y0 - dy, y1 + dy))
    zoom.set_title("the grey box, enlarged", fontsize=8)
    for spine in zoom.spines.values():
        spine.set_edgecolor("0.4")
    return ax.indicate_inset((x0 - dx, y0 - dy, x1 - x0 + 2 * dx, y1 - y0 + 2 * dy), edgecolor="0.4", alpha=1)
