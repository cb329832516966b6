"""The decoder of LLaMA2: the flow of one token through N blocks, and its grouped-query attention.

Shapes are labelled with the symbols of book/symbols.md (B, L, D, Nh, Nkv, Dh, F, V).
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Circle, ConnectionPatch, FancyBboxPatch

from ..config import ModelArgs, preset
from . import BOOK_SCALE, COLORS, arrow, box, canvas, enlarge


def _residual_add(ax, x: float, y: float) -> tuple[float, float]:
    """The ⊕ where a residual branch rejoins the stream, centred at (x, y)."""
    ax.add_patch(Circle((x, y), 0.12, facecolor="white", edgecolor="0.35", linewidth=0.8))
    ax.text(x, y, "+", ha="center", va="center", fontsize=10)
    return x, y


def _main_flow(ax, n_layers: int) -> tuple[float, float, float, float]:
    """Embedding, the block repeated N times, final norm and head; returns the attention box."""
    x, w, cx = 0.45, 2.7, 1.8
    box(ax, x, 7.2, w, 0.34, "token ids  (B, L)", "tensor")
    box(ax, x, 6.65, w, 0.34, "embedding E  (V, D)", "weight")
    arrow(ax, (cx, 7.2), (cx, 6.99))
    # the block: a dashed frame, repeated N times
    ax.add_patch(
        FancyBboxPatch(
            (0.12, 1.55),
            3.35,
            6.3 - 1.55,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="none",
            edgecolor=COLORS["accent"],
            linestyle="--",
            linewidth=1.0,
        )
    )
    ax.text(0.22, 6.12, f"× N blocks  (N = {n_layers})", color=COLORS["accent"], fontsize=8.5, va="center")
    arrow(ax, (cx, 6.65), (cx, 5.75))
    ax.text(cx + 0.08, 6.45, "h  (B, L, D)", fontsize=8, va="center", color="0.25")
    box(ax, x, 5.45, w, 0.3, "RMSNorm  (attention_norm)", "op", fontsize=8)
    attention = box(ax, x, 4.5, w, 0.6, "attention\nNh query heads, Nkv K/V heads\nRoPE on q, k", "op")
    arrow(ax, (cx, 5.45), (cx, 5.1))
    add1 = _residual_add(ax, cx, 4.05)
    arrow(ax, (cx, 4.5), (cx, 4.17))
    box(ax, x, 3.15, w, 0.3, "RMSNorm  (ffn_norm)", "op", fontsize=8)
    arrow(ax, (cx, 3.93), (cx, 3.45))
    ffn = box(ax, x, 2.25, w, 0.55, "SwiGLU feed-forward, width F\nw2(silu(w1 x) · w3 x)", "op")
    arrow(ax, (cx, 3.15), (cx, 2.8))
    add2 = _residual_add(ax, cx, 1.85)
    arrow(ax, (cx, ffn[1]), (cx, 1.97))
    # residual branches: around attention, around the feed-forward
    side = x + w + 0.18
    for start_y, add in ((6.0, add1), (3.75, add2)):
        ax.plot([cx, side, side], [start_y, start_y, add[1]], color="0.25", linewidth=0.9)
        arrow(ax, (side, add[1]), (add[0] + 0.12, add[1]))
        ax.text(
            side - 0.1,
            (start_y + add[1]) / 2,
            "residual",
            rotation=90,
            fontsize=7,
            ha="center",
            va="center",
            color="0.35",
        )
    box(ax, x, 1.1, w, 0.3, "RMSNorm  (norm)", "op", fontsize=8)
    arrow(ax, (cx, 1.73), (cx, 1.4))
    box(ax, x, 0.6, w, 0.3, "output head  (V, D)", "weight", fontsize=8)
    arrow(ax, (cx, 1.1), (cx, 0.9))
    box(ax, x, 0.1, w, 0.3, "logits  (B, L, V)", "tensor", fontsize=8)
    arrow(ax, (cx, 0.6), (cx, 0.4))
    return attention


def _gqa_detail(ax, n_heads: int, n_kv_heads: int) -> tuple[float, float, float, float]:
    """Projections, RoPE, the sharing of K/V heads by groups of query heads, and attention itself."""
    left, width = 4.05, 3.0
    col = width / 3
    top = 7.0
    ax.text(left + width / 2, top + 0.22, "inside attention (GQA)", ha="center", fontsize=9, weight="bold")
    frame = (left - 0.1, top - 5.67, width + 0.2, 5.67 + 0.45)
    ax.add_patch(
        FancyBboxPatch(
            frame[:2],
            *frame[2:],
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="none",
            edgecolor="0.6",
            linewidth=0.8,
        )
    )
    box(ax, left, top - 0.38, width, 0.32, "x  (B, L, D), normalized", "tensor", fontsize=8)
    shapes = {"q": "(B, L, Nh, Dh)", "k": "(B, L, Nkv, Dh)", "v": "(B, L, Nkv, Dh)"}
    centers = []
    for i, (name, shape) in enumerate(shapes.items()):
        cx = left + col * (i + 0.5)
        centers.append(cx)
        box(ax, cx - col / 2 + 0.04, top - 0.95, col - 0.08, 0.3, f"w{name}", "weight", fontsize=8)
        arrow(ax, (cx, top - 0.38), (cx, top - 0.65))
        box(ax, cx - col / 2 + 0.04, top - 1.62, col - 0.08, 0.44, f"{name}\n{shape}", "tensor", fontsize=7)
        arrow(ax, (cx, top - 0.95), (cx, top - 1.18))
        if name != "v":
            box(ax, cx - col / 2 + 0.04, top - 2.12, col - 0.08, 0.3, "RoPE", "op", fontsize=8)
            arrow(ax, (cx, top - 1.62), (cx, top - 1.82))
    # heads: Nh query heads above, Nkv key/value heads below, each group joined to its K/V head
    q_y, kv_y = top - 2.75, top - 3.55
    group = n_heads // n_kv_heads
    ax.text(left, q_y + 0.28, f"Nh = {n_heads} query heads", fontsize=7.5, va="center")
    ax.text(
        left,
        kv_y - 0.4,
        f"Nkv = {n_kv_heads} K/V heads, each shared\nby Nh / Nkv = {group} query heads",
        fontsize=7.5,
        va="center",
    )
    side = min(0.26, width / (1.6 * n_heads))
    tints = [COLORS["tensor"], COLORS["cache"]]
    q_x = [left + width * (i + 0.5) / n_heads for i in range(n_heads)]
    kv_x = [left + width * (j + 0.5) / n_kv_heads for j in range(n_kv_heads)]
    for i, xq in enumerate(q_x):
        j = i // group
        ax.plot([xq, kv_x[j]], [q_y - side / 2, kv_y + side / 2], color="0.45", linewidth=0.7)
        box(ax, xq - side / 2, q_y - side / 2, side, side, "", "tensor")
        ax.patches[-1].set_facecolor(tints[j % 2])
    for j, xk in enumerate(kv_x):
        box(ax, xk - side / 2, kv_y - side / 2, side, side, "", "cache")
        ax.patches[-1].set_facecolor(tints[j % 2])
    attend_y = kv_y - 1.25
    box(ax, left, attend_y, width, 0.45, "softmax(q kᵀ / √Dh + mask) v\n(B, Nh, L, Dh)", "op", fontsize=8)
    arrow(ax, (left + width / 2, kv_y - 0.7), (left + width / 2, attend_y + 0.45))
    box(ax, left, attend_y - 0.72, width, 0.4, "wo  (D, Nh·Dh)  →  (B, L, D)", "weight", fontsize=8)
    arrow(ax, (left + width / 2, attend_y), (left + width / 2, attend_y - 0.32))
    return frame


def decoder_diagram(args: ModelArgs | None = None) -> Figure:
    """LLaMA2's decoder: embedding, N blocks of RMSNorm, GQA attention with RoPE and SwiGLU, the head.

    The head counts of the attention detail, and N, are those of `args` (stories260K by default).
    """
    args = args or preset("stories260K")
    fig, ax = canvas(7.2, 7.6)
    attention = _main_flow(ax, args.n_layers)
    frame = _gqa_detail(ax, args.n_heads, args.kv_heads)
    # zoom lines from the attention box to its detail
    ax_x, ax_y, aw, ah = attention
    for y_from, y_to in ((ax_y + ah, frame[1] + frame[3]), (ax_y, frame[1])):
        fig.add_artist(
            ConnectionPatch(
                (ax_x + aw, y_from),
                (frame[0], y_to),
                "data",
                "data",
                axesA=ax,
                axesB=ax,
                color="0.6",
                linewidth=0.7,
                linestyle=":",
            )
        )
    return enlarge(fig, BOOK_SCALE)
