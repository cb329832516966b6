"""Chapter 9's figures: the roofline, the decode step's time, perplexity against file size."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from llama2_et.figures.labels import line_boxes
from llama2_et.figures.roofline import CROWDED, roofline
from llama2_et.figures.step_time import PARTS, step_parts, step_time_bars
from llama2_et.figures.tradeoff import perplexity_vs_size

RECORDED = json.loads((Path(__file__).parents[1] / "book" / "bench_results.json").read_text())
SHAPE15M = RECORDED["models"]["stories15M-shape"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def label_boxes(fig, axes_index: int = 0) -> dict[str, object]:
    """The window box of every text in one axes of the figure (without its leader line), by its text."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return {t.get_text(): Text.get_window_extent(t, renderer) for t in fig.axes[axes_index].texts}


def assert_apart(boxes: dict) -> None:
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"


def assert_inside(fig, axes_index: int, boxes: dict) -> None:
    inside = fig.axes[axes_index].get_window_extent(fig.canvas.get_renderer())
    for text, b in boxes.items():
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1, text


def assert_off_line(boxes: dict, line) -> None:
    for text, box in boxes.items():
        assert not any(box.overlaps(b) for b in line_boxes(line)), f"the line runs through {text!r}"


def test_roofline_labels_every_row_apart_inside_and_off_the_roof():
    fig = roofline(SHAPE15M, RECORDED["read_bandwidth"]["bytes_per_s"], "roofline")
    main, zoom = label_boxes(fig, 0), label_boxes(fig, 1)
    assert {r["key"] for r in SHAPE15M["rows"]} == (set(main) | set(zoom)) - {
        t for t in main if t.startswith("roof: 27.6 GB/s")
    }
    assert set(zoom) == set(CROWDED)
    roof_line = fig.axes[0].lines[0]
    assert_off_line({k: v for k, v in main.items() if not k.startswith("roof:")}, roof_line)
    for index, boxes in enumerate((main, zoom)):
        assert_apart(boxes)
        assert_inside(fig, index, boxes)


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


def test_perplexity_vs_size_labels_each_program_apart_and_off_the_eager_line():
    r260 = RECORDED["models"]["stories260K"]
    fig = perplexity_vs_size(r260, "quality")
    main, zoom = label_boxes(fig, 0), label_boxes(fig, 1)
    keys = {r["key"] for r in r260["rows"] if "perplexity" in r and "file_bytes" in r}
    assert (
        keys == (set(main) | set(zoom)) - {"fp32 eager PyTorch: 5.859"}
        and "fp32 eager PyTorch: 5.859" in main
    )
    assert set(zoom) == {"pte-portable", "pte-xnnpack", "export-llm"}  # 1.16 to 1.24 MiB, one perplexity
    for index, boxes in enumerate((main, zoom)):
        assert_apart(boxes)
        assert_inside(fig, index, boxes)
        assert_off_line({k: v for k, v in boxes.items() if k in keys}, fig.axes[index].lines[0])


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
    boxes = label_boxes(fig)
    assert_apart(boxes)
    min_lr_line = next(line for line in fig.axes[0].lines if line.get_linestyle() == ":")
    assert_off_line(boxes, min_lr_line)
