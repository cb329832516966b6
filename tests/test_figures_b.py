"""The figures of the chapter on dynamism: what export keeps of a branch, a mask view and a torch._check."""

from __future__ import annotations

import inspect
from itertools import combinations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.export import export

from llama2_et.figures.dynamism import branch_pruning, check_path, graph_ops, mask_window
from llama2_et.model import causal_mask


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig: Figure) -> list[str]:
    found = [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]
    return [t for t in found if t]


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of texts of one axes whose drawn boxes intersect."""
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        drawn = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts if t.get_text()]
        pairs += [(a, b) for (a, box_a), (b, box_b) in combinations(drawn, 2) if box_a.overlaps(box_b)]
    return pairs


class Scale(nn.Module):
    def __init__(self, double: bool):
        super().__init__()
        self.double = double

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.double:
            return x * 2
        return x + 1


def test_branch_pruning_joins_each_graph_op_to_its_source_line():
    x = torch.ones(2, 3)
    programs = {
        "export(Scale(True))": export(Scale(True), (x,)),
        "export(Scale(False))": export(Scale(False), (x,)),
    }
    assert [op for op, _ in graph_ops(programs["export(Scale(True))"])] == ["mul.Tensor"]
    assert graph_ops(programs["export(Scale(False))"])[0][1] == "return x + 1"
    fig = branch_pruning(inspect.getsource(Scale.forward), programs)
    drawn = texts(fig)
    for label in (*programs, "mul.Tensor", "add.Tensor", "return x * 2", "if self.double:"):
        assert any(label in text for text in drawn), label
    assert any("left no node" in text for text in drawn)
    assert overlapping_texts(fig) == []


def test_mask_window_prints_the_views_strides():
    fig = mask_window(causal_mask(64), seq_len=8, start_pos=20)
    drawn = "\n".join(texts(fig))
    assert "stride (64, 1), offset 0, contiguous: False" in drawn
    assert "stride (64, 1), offset 1280 = 20 × 64, contiguous: True" in drawn
    assert "56 skipped" in drawn and "rows 20..27: 8 × 64 floats" in drawn
    assert overlapping_texts(fig) == []


def test_mask_window_refuses_a_window_outside_the_mask():
    with pytest.raises(ValueError, match="must fit inside 64 mask rows"):
        mask_window(causal_mask(64), seq_len=8, start_pos=60)


def test_check_path_labels_each_stage_with_its_count():
    checks = ["begin >= 0", "begin + x.shape[0] <= self.table.shape[0]"]
    fig = check_path({"exported": 2, "edge": 2, "executorch": 0}, checks)
    drawn = "\n".join(texts(fig))
    assert "2 _assert_scalar\nnodes" in drawn and "0 _assert_scalar\nnodes" in drawn
    assert "torch._check(begin >= 0)\ntorch._check(begin + x.shape[0]" in drawn
    assert "model source: 2 checks" in drawn
    assert "to_executorch" in drawn and ".pte: no node\nchecks the position" in drawn
    assert overlapping_texts(fig) == []
    with pytest.raises(ValueError, match="executorch"):
        check_path({"exported": 2, "edge": 2}, checks)
    with pytest.raises(ValueError, match="at least one"):
        check_path({"exported": 2, "edge": 2, "executorch": 0}, [])
