"""The book's diagrams: each drawing function returns a Figure that shows what its chapter claims."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from llama2_et.config import ModelArgs, param_count, preset
from llama2_et.designs import DESIGNS, program
from llama2_et.figures.architecture import decoder_diagram
from llama2_et.figures.cache import WRITTEN, cache_steps
from llama2_et.figures.designs import design_flows
from llama2_et.model import Transformer


def texts(fig: Figure) -> list[str]:
    """Every text drawn on the figure: in its axes, their titles, and on the figure itself."""
    found = [t.get_text() for ax in fig.axes for t in ax.texts]
    found += [ax.get_title() for ax in fig.axes] + [t.get_text() for t in fig.texts]
    return [t for t in found if t]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def head_links(fig: Figure) -> list[tuple[float, float]]:
    """(x of the query head, x of the K/V head) of each two-point line: those joining two heads."""
    return [
        (line.get_xdata()[0], line.get_xdata()[1])
        for ax in fig.axes
        for line in ax.lines
        if len(line.get_xdata()) == 2
    ]


def test_decoder_diagram_labels_every_step_of_the_block():
    fig = decoder_diagram()
    assert isinstance(fig, Figure)
    drawn = "\n".join(texts(fig))
    args = preset("stories260K")
    for label in (
        "token ids  (B, L)",
        "embedding E  (V, D)",
        "RMSNorm  (attention_norm)",
        "RMSNorm  (ffn_norm)",
        "RMSNorm  (norm)",
        "SwiGLU feed-forward, width F",
        "output head  (V, D)",
        "logits  (B, L, V)",
        "q\n(B, L, Nh, Dh)",
        "k\n(B, L, Nkv, Dh)",
        "v\n(B, L, Nkv, Dh)",
        f"× N blocks  (N = {args.n_layers})",
        f"Nh = {args.n_heads} query heads",
        f"Nkv = {args.kv_heads} K/V heads",
    ):
        assert label in drawn, label
    assert texts(fig).count("RoPE") == 2  # on q and on k, not on v
    assert texts(fig).count("+") == 2  # the two residual additions


@pytest.mark.parametrize("n_heads, n_kv_heads", [(8, 4), (8, 2), (6, 6), (4, 1)])
def test_decoder_diagram_joins_each_query_head_to_its_kv_head(n_heads: int, n_kv_heads: int):
    args = ModelArgs(dim=16 * n_heads, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=32)
    links = head_links(decoder_diagram(args))
    assert len(links) == n_heads
    query_x = sorted({q for q, _ in links})
    kv_x = sorted({kv for _, kv in links})
    assert len(query_x) == n_heads and len(kv_x) == n_kv_heads
    group = n_heads // n_kv_heads
    for q, kv in links:  # query head i reads K/V head i // (Nh / Nkv), as repeat_interleave does
        assert kv_x.index(kv) == query_x.index(q) // group


def masked_entries(start_pos: int, seq_len: int, max_seq_len: int) -> int:
    """Cache slots hidden from the queries at start_pos..start_pos+L-1: those after each query."""
    return sum(max_seq_len - 1 - pos for pos in range(start_pos, start_pos + seq_len))


@pytest.mark.parametrize(
    "prompt_len, decode_steps, max_seq_len", [(4, 2, 8), (3, 4, 8), (1, 0, 4), (5, 6, 12)]
)
def test_cache_steps_draws_one_panel_per_call(prompt_len: int, decode_steps: int, max_seq_len: int):
    fig = cache_steps(prompt_len, decode_steps, max_seq_len)
    assert len(fig.axes) == 1 + decode_steps
    calls = [(0, prompt_len)] + [(prompt_len + i, 1) for i in range(decode_steps)]
    assert fig.axes[0].get_title() == f"prefill: L = {prompt_len}"
    for i, (ax, (start_pos, seq_len)) in enumerate(zip(fig.axes, calls, strict=True)):
        if i:
            assert ax.get_title() == f"decode step {i}: L = 1"
        panel = [t.get_text() for t in ax.texts]
        assert f"input_pos = {list(range(start_pos, start_pos + seq_len))}" in panel
        assert panel.count("−∞") == masked_entries(start_pos, seq_len, max_seq_len)
        assert [f"q @ {p}" for p in range(start_pos, start_pos + seq_len)] == [
            t for t in panel if t.startswith("q @")
        ]
        written = [p for p in ax.patches if matplotlib.colors.same_color(p.get_facecolor(), WRITTEN)]
        assert len(written) == seq_len  # the slots at input_pos, and only those


def test_cache_steps_refuses_more_calls_than_slots():
    with pytest.raises(ValueError, match="do not fit 8 cache slots"):
        cache_steps(prompt_len=6, decode_steps=3, max_seq_len=8)


def test_design_flows_names_each_design_and_its_inputs():
    fig = design_flows()
    assert isinstance(fig, Figure)
    drawn = texts(fig)
    model = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=8, max_seq_len=4))
    for name in DESIGNS:
        module = program(model, name)
        label = "the Transformer itself" if module is model else type(module).__name__
        assert f"{name}: {label}" in drawn
        inputs = list(inspect.signature(module.forward).parameters)
        assert any(t.startswith(f".pte  forward({', '.join(inputs)})") for t in drawn), (name, inputs)
    joined = "\n".join(drawn)
    assert "narrow(cos, sin,\nmask, start, L)" in joined and "TableWindows.window(p, L)" in joined
    assert "index_select(cos,\nsin, mask, positions)" in joined
    assert sum("(the default)" in t for t in drawn) == 1


def synthetic_sweep(bandwidth: float = 5e9) -> dict:
    """A sweep result from made-up speeds, assembled as run_sweep assembles a measured one."""
    from llama2_et.bench import model_result
    from llama2_et.bench.report import paired_ratios, summarize
    from llama2_et.bench.rows import OPTIONAL_ROWS, ROWS
    from llama2_et.bench.sweep import SWEEP_ROWS, case_name, sweep_points

    rows = [r for r in ROWS + OPTIONAL_ROWS if r.key in SWEEP_ROWS]
    models = {}
    for shape in ("stories15M", "stories42M", "stories110M"):
        args = preset(shape)
        for context in (256, 1024, 2048):
            args = args.replace(max_seq_len=context)
            fp32_bytes = 4 * (args.vocab_size * args.dim + param_count(args))  # the tied table twice
            results = []
            for i, row in enumerate(rows):
                speed = 1e3 / (1 + i + context / 256) / (args.dim / 288)
                run = {
                    "prefill_tps": [10 * speed],
                    "decode_tps": [speed],
                    "peak_rss_mib": 100.0,
                    "rss_increase_mib": 50.0,
                    "greedy_match": True,
                    "generated_tokens": 64,
                }
                table = 4 * args.vocab_size * args.dim  # an 8da4w file keeps the fp32 token table
                file_bytes = fp32_bytes if row.weights == "fp32" else table + (fp32_bytes - table) // 6
                results.append(
                    summarize(row, run, {"path": f"{row.program}.pte", "bytes": file_bytes, "export_s": 1.0})
                )
            pair = {
                "ours": {"prefill_tps": [2.0, 3.0], "decode_tps": [1.0, 1.1]},
                "reference": {"prefill_tps": [2.0, 2.0], "decode_tps": [1.0, 1.0]},
            }
            paired = {"runner-ours/export-llm": paired_ratios(pair)}
            case = model_result(args, context // 2 - 32, 64, rows, results, bandwidth, paired, {})
            models[case_name(shape, context)] = {**case, "shape": shape, "context": context}
    result = {"read_bandwidth": {"bytes_per_s": bandwidth}, "models": models}
    result["points"] = sweep_points(result)
    return result


def test_sweep_figure_draws_each_point_under_the_roof_with_labels_apart():
    from llama2_et.figures.sweep import sweep_figure

    result = synthetic_sweep()
    fig = sweep_figure(result)
    ax = fig.axes[0]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    expected = np.array([(p["bytes_per_token"] / 2**20, p["decode_tps"]) for p in result["points"]])
    assert len(result["points"]) == 9 * 6
    np.testing.assert_allclose(drawn, expected)
    (roof,) = ax.lines
    x, y = roof.get_data()
    np.testing.assert_allclose(y, 5e9 / (x * 2**20))
    assert x.min() < expected[:, 0].min() and x.max() > expected[:, 0].max()
    assert ax.get_xscale() == ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "read roof, 5.0 GB/s" in legend and "8da4w weights" in legend
    assert {"context 256", "context 1024", "context 2048", "our .pte, C++ runner"} <= set(legend)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if "\n" in t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(
        f"{m}\n{w}" for m in ("stories15M", "stories42M", "stories110M") for w in ("fp32", "8da4w")
    )
    boxes = [t.get_window_extent(renderer) for t in labels]
    boxes.append(ax.title.get_window_extent(renderer))
    for i, a in enumerate(boxes):  # no label overlaps another, nor the title
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert all(not legend_box.overlaps(b) for b in boxes)
    assert all(fig.bbox.contains(b.x0, b.y0) and fig.bbox.contains(b.x1, b.y1) for b in [*boxes, legend_box])
