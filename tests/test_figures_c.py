"""The quantization figure and the kernel colours of the execution-plan strips."""

from types import SimpleNamespace

import matplotlib
import torch

matplotlib.use("Agg")


def test_quantization_figure_draws_one_bar_per_weight_in_each_row():
    import matplotlib.pyplot as plt

    from llama2_et.figures.quantization import quantization_figure, symmetric_levels

    assert symmetric_levels(4) == (-8, 7) and symmetric_levels(8) == (-128, 127)
    weights = torch.linspace(-0.3, 0.2, 32)
    fig = quantization_figure(weights, scale=0.3 / 8, bits=4)
    top, middle, bottom = fig.axes
    assert [len(ax.patches) for ax in fig.axes] == [32, 32, 32]
    # the integers written over the middle row are the weights' own, in the int4 range
    labels = [int(t.get_text()) for t in middle.texts]
    assert labels == torch.clamp(torch.round(weights / (0.3 / 8)), -8, 7).int().tolist()
    # every error is within half a step: no weight of this group is clipped
    assert all(abs(p.get_height()) <= 0.3 / 16 + 1e-7 for p in bottom.patches)
    assert "4-bit" in top.get_title(loc="left")
    plt.close(fig)


def test_kernel_colours_name_the_most_frequent_kernels_and_the_legend_counts_every_call():
    import matplotlib.pyplot as plt

    from llama2_et.figures.program import (
        KERNEL_PALETTE,
        Instruction,
        _plan_legend,
        execution_plan_figure,
        kernel_colours,
    )

    chain = [Instruction("kernel", f"aten::op{k}", ()) for k in range(12) for _ in range(12 - k)]
    chain += [Instruction("delegate", "XnnpackBackend", ())] * 3
    colours = kernel_colours(chain)
    assert list(colours) == [f"aten::op{k}" for k in range(len(KERNEL_PALETTE))]
    assert len(set(colours.values())) == len(colours)
    labels = [entry.get_label() for entry in _plan_legend(chain, colours)]
    assert labels[0] == "XNNPACK delegate call ×3" and labels[1] == "op0 ×12"
    assert labels[-1] == "2 other kernels ×3"  # op10 twice, op11 once

    class KernelCall(SimpleNamespace):  # what `instructions` reads of a plan: a chain of kernel calls
        pass

    plan = SimpleNamespace(
        operators=[SimpleNamespace(name=f"aten::op{k}") for k in range(3)],
        chains=[
            SimpleNamespace(
                instructions=[
                    SimpleNamespace(instr_args=KernelCall(op_index=k, args=[])) for k in (0, 0, 1, 2)
                ]
            )
        ],
    )
    fig = execution_plan_figure(plan)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["op0 ×2", "op1 ×1", "op2 ×1"]
    plt.close(fig)


def test_file_bytes_names_the_rest_so_the_parts_add_up_to_the_file():
    from llama2_et.figures.program import file_bytes

    pte = SimpleNamespace(
        program=SimpleNamespace(
            constant_buffer=[SimpleNamespace(storage=b"\0" * 100)],
            backend_delegate_data=[SimpleNamespace(data=b"\0" * 30)],
        ),
        named_data=SimpleNamespace(buffers=[b"\0" * 200]),
        mutable_data=[SimpleNamespace(storage=b"\0" * 8)],
    )
    assert "the rest" not in file_bytes(pte)
    parts = file_bytes(pte, 400)
    assert parts["the rest"] == 400 - 338 and sum(parts.values()) == 400


def test_the_preproc_design_takes_a_mask_of_width_w():
    import matplotlib.pyplot as plt

    from llama2_et.figures.designs import design_flows

    fig = design_flows()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("mask (L, W)" in t for t in texts) and not any("mask (L, Lm)" in t for t in texts)
    plt.close(fig)
