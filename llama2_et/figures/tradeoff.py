"""What quantization trades: each program's perplexity against the size of its file.

A point per bench row that recorded both (the rows of one model that ran a `.pte` through the
perplexity measure); a dashed line at the fp32 eager model's perplexity. The fp32 programs whose
files are within a few hundredths of a MiB of each other are shown apart in a zoom panel.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .labels import place_labels, zoom_panel
from .roofline import scatter_rows


def _crowded(mib: np.ndarray, ppl: np.ndarray, eager: float) -> np.ndarray:
    """The points at eager's perplexity whose file sizes lie within 0.15 MiB of another such point."""
    on_line = np.abs(ppl - eager) < 1e-3 * eager
    near = np.abs(mib[:, None] - mib[None, :]) < 0.15
    return on_line & ((near & on_line[None, :]).sum(axis=1) > 1)


def perplexity_vs_size(model_result: dict, title: str):
    """Perplexity (y) against file MiB (x) for the rows of `model_result` (one model of `run_bench`)."""
    rows = [r for r in model_result["rows"] if "perplexity" in r and "file_bytes" in r]
    mib = np.array([r["file_bytes"] / 2**20 for r in rows])
    ppl = np.array([r["perplexity"] for r in rows])
    eager = next(r["perplexity"] for r in model_result["rows"] if r["key"] == "eager")
    crowded = _crowded(mib, ppl, eager)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(9, 4.4), gridspec_kw={"width_ratios": (2.5, 1)})
    lines = [axes.axhline(eager, ls="--", lw=0.8, color="0.5") for axes in (ax, zoom)]
    scatter_rows(ax, rows, mib, ppl, 26)
    scatter_rows(zoom, [r for r, c in zip(rows, crowded, strict=True) if c], mib[crowded], ppl[crowded], 36)
    span = ppl.max() - eager
    ax.set(
        xlim=(0, mib.max() * 1.45),
        ylim=(eager - 0.35 * span, ppl.max() + 0.3 * span),
        xlabel="file size (MiB)",
        ylabel="perplexity (lower is better)",
        title=title,
    )
    zoom.set(xlabel="file size (MiB)")
    for axes in (ax, zoom):
        axes.grid(alpha=0.3)
    fig.tight_layout()
    box = zoom_panel(ax, zoom, mib[crowded], (eager - 0.02, eager + 0.02), pad=0.4)
    zoom.ticklabel_format(axis="y", useOffset=False)
    note = ax.annotate(
        f"fp32 eager PyTorch: {eager:.3f}",
        (1, eager),
        xycoords=("axes fraction", "data"),
        xytext=(-4, -4),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=8,
        color="0.35",
    )
    keys = np.array([r["key"] for r in rows])
    free = ~crowded
    place_labels(ax, mib[free], ppl[free], list(keys[free]), avoid=(note, box), lines=(lines[0],))
    place_labels(zoom, mib[crowded], ppl[crowded], list(keys[crowded]), lines=(lines[1],))
    return fig
