"""The decode roofline: tokens per second against bytes read per token, under the machine's read bandwidth.

A decode step reads every weight once, so a runtime can decode at most bandwidth / bytes-per-token
tokens per second: the roof, a line of slope -1 on log-log axes. Each bench row is a point; its
height under the roof is the fraction of the bandwidth it turns into tokens. The fp32 XNNPACK rows
lie too close together to tell apart at that scale, so a panel beside the plot shows them enlarged.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import COLORS
from .labels import place_labels, zoom_panel

# the rows whose points crowd each other on the log-log plot: shown apart in the zoom panel
CROWDED = ("cpp", "runner-ours", "pte-xnnpack", "export-llm")


def scatter_rows(ax, rows, mib, tps, size: float) -> None:
    """Our programs as circles, export_llm's as squares, white-edged so that touching points stay apart."""
    for r, x, y in zip(rows, mib, tps, strict=True):
        reference = r["key"].startswith("export-llm")
        ax.scatter(
            x,
            y,
            s=size,
            marker="s" if reference else "o",
            color="0.45" if reference else COLORS["accent"],
            edgecolors="white",
            linewidths=0.6,
            zorder=3,
        )


def roofline(model_result: dict, bandwidth: float, title: str, skip: tuple[str, ...] = ()):
    """A log-log plot of each bench row's decode tok/s against its MiB read per token, with the roof.

    `model_result` is one model of `run_bench`'s result; `bandwidth` its read bandwidth in bytes/s.
    Rows in `skip` are left out. eager-nocache's point counts the weights only: it recomputes every
    position's keys and values at each step instead of reading a cache. The rows in CROWDED are
    labelled in a zoom panel on the right.
    """
    rows = [r for r in model_result["rows"] if r["key"] not in skip and "bytes_per_token" in r]
    mib = np.array([r["bytes_per_token"] / 2**20 for r in rows])
    tps = np.array([r["decode_tps"] for r in rows])
    crowded = np.array([r["key"] in CROWDED for r in rows])
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(9, 4.8), gridspec_kw={"width_ratios": (2.5, 1)})
    x = np.geomspace(mib.min() / 2.5, mib.max() * 2.5, 50)
    roof = bandwidth / (x * 2**20)
    (roof_line,) = ax.plot(x, roof, color=COLORS["accent"], linewidth=1.2)
    scatter_rows(ax, rows, mib, tps, 26)
    scatter_rows(zoom, [r for r, c in zip(rows, crowded, strict=True) if c], mib[crowded], tps[crowded], 36)
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(x[0], x[-1]),
        ylim=(tps.min() / 2.5, roof[0] * 1.5),
        xlabel="MiB read per decoded token (weights + KV cache)",
        ylabel="decode tokens/s",
        title=title,
    )
    zoom.set(xlabel="MiB read per token", ylabel="decode tokens/s")
    for axes in (ax, zoom):
        axes.grid(which="both", alpha=0.25)
    fig.tight_layout()
    box = zoom_panel(ax, zoom, mib[crowded], tps[crowded], pad=0.6)
    # the roof's label along the line, near its upper left end, rotated to the line's slope on screen
    (x0, y0), (x1, y1) = ax.transData.transform([(x[3], roof[3]), (x[12], roof[12])])
    roof_label = ax.text(
        x[3],
        roof[3] * 1.12,
        f"roof: {bandwidth / 1e9:.1f} GB/s read bandwidth / bytes per token",
        color=COLORS["accent"],
        fontsize=8,
        rotation=np.degrees(np.arctan2(y1 - y0, x1 - x0)),
        rotation_mode="anchor",
        va="bottom",
    )
    free = ~crowded
    keys = [r["key"] for r in rows]
    place_labels(
        ax, mib[free], tps[free], list(np.array(keys)[free]), avoid=(roof_label, box), lines=(roof_line,)
    )
    place_labels(zoom, mib[crowded], tps[crowded], list(np.array(keys)[crowded]))
    return fig
