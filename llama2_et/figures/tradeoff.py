"""What quantization trades: each program's perplexity against the size of its file.

A point per bench row that recorded both (the rows of one model that ran a `.pte` through the
perplexity measure); a dashed line at the fp32 eager model's perplexity.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import COLORS
from .labels import place_labels


def perplexity_vs_size(model_result: dict, title: str):
    """Perplexity (y) against file MiB (x) for the rows of `model_result` (one model of `run_bench`)."""
    rows = [r for r in model_result["rows"] if "perplexity" in r and "file_bytes" in r]
    mib = np.array([r["file_bytes"] / 2**20 for r in rows])
    ppl = np.array([r["perplexity"] for r in rows])
    eager = next(r["perplexity"] for r in model_result["rows"] if r["key"] == "eager")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.axhline(eager, ls="--", lw=0.8, color="0.5")
    for r, x, y in zip(rows, mib, ppl, strict=True):
        reference = r["key"].startswith("export-llm")
        ax.scatter(
            x, y, s=28, marker="s" if reference else "o", color="0.45" if reference else COLORS["accent"]
        )
    span = ppl.max() - eager
    ax.set(
        xlim=(0, mib.max() * 1.45),
        ylim=(eager - 0.35 * span, ppl.max() + 0.3 * span),
        xlabel="file size (MiB)",
        ylabel="perplexity (lower is better)",
        title=title,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
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
    place_labels(ax, mib, ppl, [r["key"] for r in rows], avoid=(note,))
    return fig
