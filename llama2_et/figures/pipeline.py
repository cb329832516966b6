"""The export pipeline: an eager nn.Module through torch.export, Edge, XNNPACK and planning to a .pte."""

from __future__ import annotations

from . import arrow, box, canvas

# (what the stage holds, the call that produces it, its colour) from the model to the runtime
STAGES = (
    ("eager nn.Module\n(Transformer + KV cache)", "", "weight"),
    ("ExportedProgram\n(ATen graph, Dim for L)", "torch.export", "op"),
    ("Edge dialect\n(core ATen ops)", "to_edge", "op"),
    ("XNNPACK delegate calls\n+ portable ops", "partition\n(XnnpackPartitioner)", "delegate"),
    ("execution plan\n+ memory plan", "to_executorch", "cache"),
    (".pte file", "serialize", "tensor"),
    ("runtime\n(Python, C++, phone)", "load_method", "portable"),
)


def export_pipeline():
    """The stages of `export_pte` left to right, each labelled with the call that makes the next."""
    width, height = 13.0, 1.9
    fig, ax = canvas(width, height)
    w, h, gap, y = 1.45, 0.85, 0.4, 0.25
    for i, (text, call, kind) in enumerate(STAGES):
        x = 0.1 + i * (w + gap)
        box(ax, x, y, w, h, text, kind=kind, fontsize=7.5)
        if i:
            arrow(ax, (x - gap, y + h / 2), (x, y + h / 2))
            ax.text(x - gap / 2, y + h + 0.12, call, ha="center", va="bottom", fontsize=7, color="0.25")
    return fig
