"""The scaling sweep on the decode roofline: every shape, context and quantization under the read roof.

One marker per program and runner (colour), context (shape) and weights (filled: fp32, hollow:
8da4w), placed at its bytes read per token and decode tok/s; the roof is bandwidth / bytes per
token. Each model's name and weights label its points along the top, raised a tier where labels
would overlap.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from . import COLORS

SERIES = {  # (program, runner) -> colour
    ("ours", "C++ runner"): "#d94801",
    ("ours", "TextLLMRunner"): COLORS["accent"],
    ("export_llm", "TextLLMRunner"): "0.45",
}
MARKERS = ("o", "s", "^", "D", "v")  # one per context, smallest first


def series_name(program: str, runner: str) -> str:
    """How the legend names a (program, runner)."""
    return f"export_llm's .pte, {runner}" if program == "export_llm" else f"our .pte, {runner}"


def sweep_figure(result: dict):
    """A log-log plot of the sweep's decode tok/s against MiB read per token, with the read roof.

    `result` is run_sweep's (its "points" and "read_bandwidth").
    """
    points = result["points"]
    bandwidth = result["read_bandwidth"]["bytes_per_s"]
    contexts = sorted({p["context"] for p in points})
    marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(contexts)}
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    mib = np.array([p["bytes_per_token"] / 2**20 for p in points])
    x = np.geomspace(mib.min() / 1.5, mib.max() * 1.5, 50)
    ax.plot(x, bandwidth / (x * 2**20), color=COLORS["accent"], linewidth=1.2, linestyle="--")
    for p in points:
        colour = SERIES[p["program"], p["runner"]]
        ax.scatter(
            p["bytes_per_token"] / 2**20,
            p["decode_tps"],
            s=36,
            marker=marker[p["context"]],
            facecolor=colour if p["weights"] == "fp32" else "none",
            edgecolor=colour,
            linewidth=1.2,
            zorder=3,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="MiB read per decoded token (weights + KV cache)",
        ylabel="decode tokens/s",
    )
    ax.set_title("decode speed under the read roof", pad=8)
    for axis in (ax.xaxis, ax.yaxis):  # 2000 and 0.5, not 2x10^3 and 5x10^-1; minor ticks at 2 and 5 only
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(
            FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "25" else "")
        )
    ax.grid(which="both", alpha=0.25)
    ax.legend(handles=legend_handles(points, marker, bandwidth), loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    label_groups(ax, points)
    fig.tight_layout()
    return fig


def legend_handles(points: list[dict], marker: dict, bandwidth: float) -> list[Line2D]:
    """Legend entries: the roof, each series' colour, each context's marker, filled or hollow for the weights."""
    handles = [
        Line2D([], [], color=COLORS["accent"], linestyle="--", label=f"read roof, {bandwidth / 1e9:.1f} GB/s")
    ]
    for program, runner in sorted({(p["program"], p["runner"]) for p in points}, reverse=True):
        handles.append(
            Line2D(
                [],
                [],
                color=SERIES[program, runner],
                marker="o",
                linestyle="",
                label=series_name(program, runner),
            )
        )
    for context, shape in marker.items():
        handles.append(Line2D([], [], color="0.3", marker=shape, linestyle="", label=f"context {context}"))
    for weights in sorted({p["weights"] for p in points}, key=lambda w: w != "fp32"):
        fill = "0.3" if weights == "fp32" else "none"
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor=fill,
                linestyle="",
                label=f"{weights} weights",
            )
        )
    return handles


def label_groups(ax, points: list[dict]) -> list:
    """A label per (model, weights) above the axes at its points' mean log-x, tiers raised to avoid overlaps."""
    groups: dict[tuple[str, str], list[float]] = {}
    for p in points:
        groups.setdefault((p["model"], p["weights"]), []).append(p["bytes_per_token"] / 2**20)
    renderer = ax.figure.canvas.get_renderer()
    tier_ends: list[float] = []  # right edge, in pixels, of the last label of each tier
    labels = []
    centres = {key: math.exp(np.mean(np.log(xs))) for key, xs in groups.items()}
    for (model, weights), centre in sorted(centres.items(), key=lambda item: item[1]):
        label = ax.annotate(
            f"{model}\n{weights}",
            (centre, 1),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.25",
        )
        box = label.get_window_extent(renderer)
        height = box.height * 72 / ax.figure.dpi + 2  # points
        tier = next((i for i, end in enumerate(tier_ends) if box.x0 > end + 4), len(tier_ends))
        if tier == len(tier_ends):
            tier_ends.append(0.0)
        label.xyann = (0, 4 + tier * height)
        tier_ends[tier] = box.x1
        labels.append(label)
    ax.set_title(ax.get_title(), pad=8 + len(tier_ends) * height)
    return labels
