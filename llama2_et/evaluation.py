"""How a run is measured: the held-out windows and their loss, and the plot of the loss curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import PreparedData, TokenBatches, bigram_entropy, open_shard, unigram_entropy
from .distributed import Distributed
from .files import atomic_write
from .model import Transformer


@dataclass
class HeldOut:
    """The validation windows every evaluation scores, and the losses of models without context."""

    x: torch.Tensor  # (N, L) windows
    y: torch.Tensor  # (N, L) the same shifted by one token
    unigram_entropy: float  # nats/token of the validation tokens: the best loss without context
    bigram_entropy: float  # nats/token of the validation tokens given the previous one


def held_out(prepared: PreparedData, seq_len: int, windows: int) -> HeldOut:
    """The first `windows` validation windows of seq_len tokens, and the validation tokens' entropies."""
    x, y = TokenBatches(prepared.val_shards, seq_len, 1).windows(windows)
    tokens = np.concatenate([open_shard(s) for s in prepared.val_shards])
    return HeldOut(x, y, unigram_entropy(tokens), bigram_entropy(tokens))


@torch.no_grad()
def evaluate(
    model: Transformer, x: torch.Tensor, y: torch.Tensor, batch_size: int, ctx: Distributed
) -> float:
    """Mean cross-entropy (nats/token) over windows x, y (N, L), split across processes."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses, tokens)
    rows = torch.arange(ctx.rank, len(x), ctx.world_size)
    for i in range(0, len(rows), batch_size):
        xb, yb = x[rows[i : i + batch_size]].to(ctx.device), y[rows[i : i + batch_size]].to(ctx.device)
        logits = model(xb)  # (B, L, V)
        total[0] += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").double()
        total[1] += yb.numel()
    model.train()
    if ctx.world_size > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def plot_losses(
    history: dict, path: str | Path, unigram: float | None = None, bigram: float | None = None
) -> Path:
    """A PNG of the train and validation loss curves, with the unigram and bigram entropies for reference."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(history["step"], history["train_loss"], lw=1, alpha=0.7, label="train (batch)")
    ax.plot(history["val_step"], history["val_loss"], "o-", label="validation (held-out stories)")
    if unigram is not None:
        ax.axhline(unigram, ls="--", c="gray", label=f"unigram entropy {unigram:.2f}")
    if bigram is not None:
        ax.axhline(bigram, ls=":", c="gray", label=f"bigram entropy {bigram:.2f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return Path(path)
