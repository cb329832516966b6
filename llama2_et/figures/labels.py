"""Labels for scattered points that overlap neither each other, nor the points, nor the axes' edges.

Each label tries positions around its point, nearest first (right, left, then higher and lower
rows joined to the point by a thin leader line), and takes the first whose box is free. Call it
once the figure's layout is final (after `tight_layout` and the axis limits), since it measures
the boxes as they will be drawn.
"""

from __future__ import annotations

from matplotlib.transforms import Bbox

# offsets in points (dx, dy): beside the point first, then rows above and below it, right before left
_ROWS = (0, 11, -11, 22, -22, 33, -33, 44, -44, 55, -55)
OFFSETS = [(dx, dy) for dy in _ROWS for dx in (7, -7)] + [(dx, dy) for dy in _ROWS for dx in (40, -40)]
POINT_RADIUS_PX = 5


def _overlap(box: Bbox, others: list[Bbox]) -> float:
    """Area box shares with the others, in square pixels."""
    total = 0.0
    for other in others:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        total += max(w, 0) * max(h, 0)
    return total


def place_labels(ax, xs, ys, labels: list[str], avoid: tuple = (), fontsize: float = 8) -> list:
    """Annotate point (xs[i], ys[i]) with labels[i] where the label's box is free; returns the annotations.

    `avoid` holds other artists (a line's label, a legend) whose boxes labels must not cover.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    r = POINT_RADIUS_PX
    taken = [
        Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in to_px(list(zip(xs, ys, strict=True)))
    ]
    taken += [artist.get_window_extent(renderer) for artist in avoid]
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
            box = note.get_window_extent(renderer).expanded(1.0, 1.15)
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
