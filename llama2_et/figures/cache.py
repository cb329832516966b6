"""The static KV cache call by call: which slots a call writes, and which slots its queries may read.

The slots and the mask come from the package itself (`TableWindows.window`), so the figure shows what
the model does: a prefill of L tokens, then decode steps of one token each.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..windows import TableWindows
from . import BOOK_SCALE, COLORS, enlarge

EMPTY, READ, WRITTEN = "white", COLORS["cache"], "#74c476"  # cache slot: never written, earlier, now


def _cell(ax, col: float, row: float, face: str, text: str = "", **text_kw) -> None:
    ax.add_patch(Rectangle((col, row), 1, 1, facecolor=face, edgecolor="0.55", linewidth=0.6))
    if text:
        ax.text(col + 0.5, row + 0.5, text, ha="center", va="center", **{"fontsize": 7, **text_kw})


def _panel(ax, title: str, start_pos: int, seq_len: int, windows: TableWindows, rows: int) -> None:
    """One call: the cache row (slots written before, written now, empty) above its mask rows."""
    _, _, mask, input_pos = windows.window(start_pos, seq_len)  # mask (L, Lm), input_pos (L,)
    n_slots = windows.max_seq_len
    written_now = set(input_pos.tolist())
    for slot in range(n_slots):
        face = WRITTEN if slot in written_now else READ if slot < start_pos else EMPTY
        _cell(ax, slot, rows + 1, face, str(slot), color="0.3")
    for r, (pos, mask_row) in enumerate(zip(input_pos.tolist(), mask, strict=True)):
        y = rows - 1 - r
        for slot, value in enumerate(mask_row.tolist()):
            allowed = value == 0.0
            _cell(ax, slot, y, COLORS["tensor"] if allowed else "0.85", "" if allowed else "−∞", color="0.45")
        ax.text(-0.2, y + 0.5, f"q @ {pos}", ha="right", va="center", fontsize=7)
    ax.text(-0.2, rows + 1.5, "K, V slot", ha="right", va="center", fontsize=7)
    ax.text(
        n_slots / 2, rows + 0.5, f"input_pos = {input_pos.tolist()}", ha="center", va="center", fontsize=7.5
    )
    ax.set_title(title, fontsize=8.5)
    ax.set_xlim(-2.0, n_slots + 0.1)
    ax.set_ylim(-0.1, rows + 2.1)
    ax.set_aspect("equal")
    ax.axis("off")


def cache_steps(prompt_len: int = 4, decode_steps: int = 2, max_seq_len: int = 8) -> Figure:
    """One panel per call: a prefill of prompt_len tokens, then decode_steps calls of one token.

    Each panel shows the Lm cache slots (dark: written by this call at input_pos; light: written
    earlier; white: empty) and, below, the mask rows of the call's queries (−∞: not visible).
    """
    if prompt_len < 1 or decode_steps < 0 or prompt_len + decode_steps > max_seq_len:
        raise ValueError(
            f"a prefill of {prompt_len} tokens and {decode_steps} decode steps do not fit "
            f"{max_seq_len} cache slots; choose prompt_len >= 1 and prompt_len + decode_steps <= max_seq_len"
        )
    windows = TableWindows(head_dim=2, max_seq_len=max_seq_len)
    calls = [(f"prefill: L = {prompt_len}", 0, prompt_len)]
    calls += [(f"decode step {i + 1}: L = 1", prompt_len + i, 1) for i in range(decode_steps)]
    width = 2.45 * len(calls)
    fig, axes = plt.subplots(1, len(calls), figsize=(width, 0.27 * (prompt_len + 3) + 0.4), squeeze=False)
    for ax, (title, start_pos, seq_len) in zip(axes[0], calls, strict=True):
        _panel(ax, title, start_pos, seq_len, windows, rows=prompt_len)
    fig.tight_layout(w_pad=0.4, rect=(0, 0.1, 1, 1))
    fig.text(
        0.5,
        0.04,
        "cache slot: dark = written by this call at input_pos, light = written before, white = empty;"
        "  mask: −∞ = hidden from the query",
        ha="center",
        fontsize=7.5,
        color="0.3",
    )
    return enlarge(fig, BOOK_SCALE)
