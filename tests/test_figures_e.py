"""Chapter 9's figures: the roofline, the decode step's time, perplexity against file size."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from llama2_et.figures.roofline import roofline
from llama2_et.figures.step_time import PARTS, step_parts, step_time_bars
from llama2_et.figures.tradeoff import perplexity_vs_size

RECORDED = json.loads((Path(__file__).parents[1] / "book" / "bench_results.json").read_text())
SHAPE15M = RECORDED["models"]["stories15M-shape"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def label_boxes(fig) -> dict[str, object]:
    """The window box of every text in the figure's first axes, by its text."""
    renderer = fig.canvas.get_renderer()
    return {t.get_text(): t.get_window_extent(renderer) for t in fig.axes[0].texts}


def assert_apart(boxes: dict) -> None:
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"


def test_roofline_labels_every_row_apart_and_inside():
    fig = roofline(SHAPE15M, RECORDED["read_bandwidth"]["bytes_per_s"], "roofline")
    boxes = label_boxes(fig)
    keys = [r["key"] for r in SHAPE15M["rows"] if r["key"] != "eager-nocache"]
    assert set(keys) < set(boxes) and any(text.startswith("roof: 27.6 GB/s") for text in boxes)
    assert_apart(boxes)
    inside = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
    assert all(
        inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
        for b in boxes.values()
    )


def test_step_parts_add_up_and_find_each_design_attention():
    ours, theirs, *_ = SHAPE15M["profile"].values()
    for profile in (ours, theirs):
        assert sum(step_parts(profile).values()) == pytest.approx(profile["step_ms"])
    assert (
        step_parts(ours)["XNNPACK: attention"] > 0
        and step_parts(ours)["outside XNNPACK: custom SDPA (attention)"] == 0
    )
    assert step_parts(theirs)["outside XNNPACK: custom SDPA (attention)"] > 0
    fig = step_time_bars({"ours": ours, "theirs": theirs}, "step")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["ours", "theirs"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(PARTS)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(
        f"{p['step_ms']:.2f} ms" for p in (ours, theirs)
    )


def test_perplexity_vs_size_labels_each_program_with_a_perplexity():
    r260 = RECORDED["models"]["stories260K"]
    fig = perplexity_vs_size(r260, "quality")
    boxes = label_boxes(fig)
    assert {r["key"] for r in r260["rows"] if "perplexity" in r and "file_bytes" in r} < set(boxes)
    assert "fp32 eager PyTorch: 5.859" in boxes
    assert_apart(boxes)


def test_lr_schedule_draws_lr_at_for_each_run():
    from llama2_et.figures.schedule import lr_schedule
    from llama2_et.optimizer import lr_at
    from llama2_et.train_config import TrainConfig

    short, preset = TrainConfig(max_steps=150), TrainConfig()
    fig = lr_schedule({"short": short, "preset": preset}, "lr")
    curves = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 2]
    assert [len(c.get_xdata()) for c in curves] == [150, 500]
    assert list(curves[0].get_ydata()) == [lr_at(s, short) for s in range(150)]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "short (150 steps)",
        "preset (500 steps)",
    ]
    assert_apart(label_boxes(fig))
