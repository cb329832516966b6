"""Where a decode step's time goes: one stacked bar per program, from its ETDump profile.

A profile (`llama2_et.bench.profile.profile_decode`) gives per decode step the time inside the
delegate calls (XNNPACK), in operators outside them (ExecuTorch's portable and custom kernels), and
the rest (the runtime moving between instructions). Attention is taken out of the first two, where
its operators are among the profile's top operators: XNNPACK's batch matrix multiplies (our
programs) and the custom SDPA operator (`export_llm`'s).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import COLORS

# part of a step -> (colour, hatch)
PARTS = {
    "XNNPACK: attention": (COLORS["delegate"], "//"),
    "XNNPACK: linear layers and the rest": (COLORS["delegate"], ""),
    "outside XNNPACK: custom SDPA (attention)": (COLORS["portable"], "//"),
    "outside XNNPACK: other operators": (COLORS["portable"], ""),
    "runtime, between operators": (COLORS["op"], ""),
}


def step_parts(profile: dict) -> dict[str, float]:
    """A profile's ms per decode step, split into the PARTS (they add up to its step_ms)."""
    top = profile["top_ops"]
    bmm = sum(o["ms"] for o in top if o["op"].startswith("Batch Matrix Multiply"))
    sdpa = sum(o["ms"] for o in top if "custom_sdpa" in o["op"])
    parts = dict.fromkeys(PARTS, 0.0)
    parts["XNNPACK: attention"] = bmm
    parts["XNNPACK: linear layers and the rest"] = profile["delegate_ms"] - bmm
    parts["outside XNNPACK: custom SDPA (attention)"] = sdpa
    parts["outside XNNPACK: other operators"] = profile["portable_ms"] - sdpa
    parts["runtime, between operators"] = profile["step_ms"] - profile["delegate_ms"] - profile["portable_ms"]
    return parts


def step_time_bars(profiles: dict[str, dict], title: str):
    """Horizontal stacked bars, one per profile (keyed by a short program name), in ms per decode step."""
    names = list(profiles)
    split = np.array([list(step_parts(profiles[n]).values()) for n in names])  # (programs, parts)
    height = 1.6 + 0.4 * len(names)
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(names))[::-1]
    left = np.zeros(len(names))
    for j, (part, (color, hatch)) in enumerate(PARTS.items()):
        ax.barh(
            y,
            split[:, j],
            left=left,
            height=0.6,
            color=color,
            hatch=hatch,
            edgecolor="0.35",
            lw=0.6,
            label=part,
        )
        left += split[:, j]
    for yi, total in zip(y, left, strict=True):
        ax.text(total + left.max() * 0.01, yi, f"{total:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, left.max() * 1.12)
    ax.set(xlabel="ms per decode step (ETDump)", title=title)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.7 / height, 1, 1))  # the legend's three rows below the axes
    return fig
