"""The decode roofline: tokens per second against bytes read per token, under the machine's read bandwidth.

A decode step reads every weight once, so a runtime can decode at most bandwidth / bytes-per-token
tokens per second: the roof, a line of slope -1 on log-log axes. Each bench row is a point; its
height under the roof is the fraction of the bandwidth it turns into tokens.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import COLORS
from .labels import place_labels


def roofline(model_result: dict, bandwidth: float, title: str, skip: tuple[str, ...] = ("eager-nocache",)):
    """A log-log plot of each bench row's decode tok/s against its MiB read per token, with the roof.

    `model_result` is one model of `run_bench`'s result; `bandwidth` its read bandwidth in bytes/s.
    Rows in `skip` (eager without a cache reads a growing sequence, not a fixed set of bytes) are left out.
    Each point is labelled with its row key where the label overlaps no other label or point.
    """
    rows = [r for r in model_result["rows"] if r["key"] not in skip and "bytes_per_token" in r]
    mib = np.array([r["bytes_per_token"] / 2**20 for r in rows])
    tps = np.array([r["decode_tps"] for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = np.geomspace(mib.min() / 2.5, mib.max() * 2.5, 50)
    roof = bandwidth / (x * 2**20)
    ax.plot(x, roof, color=COLORS["accent"], linewidth=1.2)
    for r, xm, y in zip(rows, mib, tps, strict=True):
        reference = r["key"].startswith("export-llm")
        ax.scatter(
            xm, y, s=28, marker="s" if reference else "o", color="0.45" if reference else COLORS["accent"]
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(x[0], x[-1]),
        ylim=(tps.min() / 2.5, roof[0] * 1.5),
        xlabel="MiB read per decoded token (weights + KV cache)",
        ylabel="decode tokens/s",
        title=title,
    )
    ax.grid(which="both", alpha=0.25)
    fig.tight_layout()
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
    place_labels(ax, mib, tps, [r["key"] for r in rows], avoid=(roof_label,))
    return fig
