"""One group of weights quantized: its fp32 values, the grid its scale spans, the integers, the error.

Symmetric quantization with b bits stores each weight w of a group as an integer
q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) and one fp32 scale s per group; the kernels compute
with s * q. The figure draws the three rows a reader compares: w against the grid of levels s * k,
the integers q, and the rounding error w - s * q, which stays within s / 2 unless w was clipped.
"""

from __future__ import annotations

import torch

from . import COLORS


def symmetric_levels(bits: int) -> tuple[int, int]:
    """The integer range of signed b-bit values: (-2^(b-1), 2^(b-1) - 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantization_figure(weights: torch.Tensor, scale: float, bits: int = 4, title: str = ""):
    """weights (G,) of one group, their integers at `scale`, the dequantized values and the error."""
    import matplotlib.pyplot as plt

    w = weights.detach().float().flatten()
    qmin, qmax = symmetric_levels(bits)
    q = torch.clamp(torch.round(w / scale), qmin, qmax)
    error = w - scale * q
    index = range(len(w))
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3, 1.5]}
    )
    for k in range(qmin, qmax + 1):  # the values s * q can take
        top.axhline(scale * k, color="0.85", lw=0.6, zorder=0)
    top.bar(index, w, width=0.7, color=COLORS["weight"], edgecolor="0.4", lw=0.5, label="fp32 weight w")
    top.scatter(index, scale * q, color=COLORS["accent"], s=14, zorder=3, label="dequantized s·q")
    top.set_ylabel("value")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    top.set_title(
        title or f"one group of {len(w)} weights, {bits}-bit, scale s = {scale:.4g}", fontsize=9, loc="left"
    )
    top.text(1.01, 0.05, f"grey lines: s·k,\nk = {qmin}..{qmax}", transform=top.transAxes, fontsize=8)
    middle.bar(index, q, width=0.7, color=COLORS["op"], edgecolor="0.4", lw=0.5)
    for i, value in zip(index, q.tolist(), strict=True):
        middle.text(i, value + (0.4 if value >= 0 else -0.4), f"{int(value)}", ha="center",
                    va="bottom" if value >= 0 else "top", fontsize=6.5)  # fmt: skip
    middle.set_ylim(qmin - 3, qmax + 3)
    middle.set_ylabel(f"int{bits} q")
    bottom.bar(index, error, width=0.7, color=COLORS["portable"], edgecolor="0.4", lw=0.5)
    for bound in (-scale / 2, scale / 2):
        bottom.axhline(bound, color=COLORS["accent"], lw=0.8, ls="--")
    bottom.text(1.01, 0.5, "dashed: ±s/2", transform=bottom.transAxes, fontsize=8, va="center")
    bottom.set_ylabel("error w − s·q")
    bottom.set_xlabel("weight index in the group")
    fig.align_ylabels()
    fig.tight_layout()
    return fig
