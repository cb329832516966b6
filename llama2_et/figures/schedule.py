"""The learning-rate schedule of a training run: linear warmup, then cosine decay to min_lr.

Drawn from `llama2_et.optimizer.lr_at` itself, step by step, so the figure is the schedule the
training loop sets.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..optimizer import lr_at
from ..train_config import TrainConfig
from . import COLORS


def lr_schedule(runs: dict[str, TrainConfig], title: str):
    """The learning rate at every step of each run (keyed by a short name), warmup ends marked."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    styles = [{"color": COLORS["accent"], "lw": 1.6}, {"color": "0.45", "lw": 1.0, "ls": "--"}]
    for (name, cfg), style in zip(runs.items(), styles * len(runs), strict=False):
        steps = range(cfg.max_steps)
        ax.plot(steps, [lr_at(s, cfg) for s in steps], label=f"{name} ({cfg.max_steps} steps)", **style)
        end = cfg.warmup_steps - 1
        ax.plot(end, lr_at(end, cfg), "o", ms=4, color=style["color"])
    first = next(iter(runs.values()))
    ax.annotate(
        f"end of warmup, step {first.warmup_steps - 1}: {first.learning_rate:g}",
        (first.warmup_steps - 1, first.learning_rate),
        xytext=(10, 4),
        textcoords="offset points",
        va="bottom",
        fontsize=8,
    )
    ax.axhline(first.min_lr, color="0.6", lw=0.8, ls=":")
    ax.annotate(  # below the line, a few points clear of it
        f"min_lr {first.min_lr:g}",
        (1, first.min_lr),
        xycoords=("axes fraction", "data"),
        xytext=(-4, -4),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=8,
    )
    ax.set(xlabel="step", ylabel="learning rate", title=title, ylim=(0, first.learning_rate * 1.2))
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
