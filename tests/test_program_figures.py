"""The program figures read a real .pte: its instructions, its planned tensors and its KV cache."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def xnnpack_pte(stories260k_pte):
    from llama2_et.figures.program import read_pte

    return read_pte(stories260k_pte("gather", "xnnpack"))


@pytest.mark.slow
def test_instructions_are_the_programs_delegate_and_kernel_calls(xnnpack_pte, stories260k):
    from llama2_et.figures.program import forward_plan, instructions

    plan = forward_plan(xnnpack_pte.program)
    chain = instructions(plan)
    raw = plan.chains[0].instructions
    # in execution order: the token's embedding and RoPE rows, then per layer its two cache writes
    # between the delegate call that computes K, V and the one that attends; last, the classifier's
    calls = [i.name for i in chain if i.name in ("index_put_", "XnnpackBackend")]
    n_layers = stories260k.args.n_layers
    assert calls == [
        "XnnpackBackend",
        *["index_put_", "index_put_", "XnnpackBackend"] * n_layers,
        "XnnpackBackend",
    ]
    first_delegate = next(k for k, i in enumerate(chain) if i.kind == "delegate")
    assert "embedding" in [i.name for i in chain[:first_delegate]]
    delegate_calls = [i for i in raw if type(i.instr_args).__name__ == "DelegateCall"]
    assert sum(i.kind == "delegate" for i in chain) == len(delegate_calls) > 0
    # every delegate the program holds is XNNPACK's and is called
    assert {plan.delegates[c.instr_args.delegate_index].id for c in delegate_calls} == {"XnnpackBackend"}
    assert sorted(c.instr_args.delegate_index for c in delegate_calls) == list(range(len(plan.delegates)))
    # the cache writes stay outside the delegate: two per layer
    assert sum(i.name == "index_put_" for i in chain) == 2 * stories260k.args.n_layers


@pytest.mark.slow
def test_planned_tensors_and_the_kv_cache(xnnpack_pte, stories260k, pte_context):
    from llama2_et.config import kv_cache_bytes
    from llama2_et.figures.program import forward_plan, planned_tensors

    args = stories260k.args.replace(max_seq_len=pte_context)
    plan = forward_plan(xnnpack_pte.program)
    tensors = planned_tensors(plan)
    by_value = {t.value: t for t in tensors}
    # the method's inputs, tokens (1, L) and input_pos (1,), int64 with L up to the context, and its
    # output, the logits (1, V) fp32, are planned at their largest
    method_io = [(by_value[v].sizes, by_value[v].nbytes) for v in (*plan.inputs, *plan.outputs)]
    assert method_io == [
        ((1, pte_context), 8 * pte_context),
        ((1,), 8),
        ((1, args.vocab_size), 4 * args.vocab_size),
    ]
    # every other planned tensor is written by an instruction, or is state the file initializes
    assert all(t.first >= 0 or t.initial is not None for t in tensors if t.value not in plan.inputs)
    assert all(t.offset + t.nbytes <= sum(plan.non_const_buffer_sizes) for t in tensors)

    cache = [t for t in tensors if t.is_cache]
    assert len(cache) == 2 * args.n_layers
    assert sum(t.nbytes for t in cache) == kv_cache_bytes(args)
    shapes = {(args.kv_heads, args.head_dim, pte_context), (args.kv_heads, pte_context, args.head_dim)}
    assert {t.sizes for t in cache} == shapes
    # the file stores the cache's initial content, and it is zeros
    for t in cache:
        assert set(xnnpack_pte.mutable_data[t.initial].storage) == {0}
        assert len(xnnpack_pte.mutable_data[t.initial].storage) == t.nbytes
    # cache buffers never share bytes with each other
    ranges = sorted((t.offset, t.offset + t.nbytes) for t in cache)
    assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))
    # the planner's promise, checked with our lifetimes: tensors that share bytes are never live at once
    # (an instruction may read one and write the other)
    for i, a in enumerate(tensors):
        for b in tensors[i + 1 :]:
            if a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes:
                assert a.last <= b.first or b.last <= a.first, (a, b)


@pytest.mark.slow
def test_figures_draw_one_mark_per_instruction_and_per_planned_tensor(xnnpack_pte):
    from matplotlib.patches import Rectangle

    from llama2_et.figures.program import (
        execution_plan_figure,
        forward_plan,
        instructions,
        memory_plan_figure,
        planned_tensors,
    )

    plan = forward_plan(xnnpack_pte.program)
    fig = execution_plan_figure(plan)
    cells = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(cells) == len(instructions(plan))
    fig = memory_plan_figure(plan)
    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(bars) == len(planned_tensors(plan))


@pytest.mark.slow
def test_file_bytes_accounts_for_the_file(stories260k_pte, stories260k):
    from llama2_et import integrity
    from llama2_et.figures.program import file_bytes, read_pte

    args = stories260k.args
    path = stories260k_pte("gather", "xnnpack")
    parts = file_bytes(read_pte(path))
    assert sum(parts.values()) <= path.stat().st_size - integrity.SEAL_SIZE
    # given the size, the rest (program, padding, seal) makes the parts add up to the file
    sized = file_bytes(read_pte(path), path.stat().st_size)
    assert sum(sized.values()) == path.stat().st_size
    assert sized["the rest"] >= integrity.SEAL_SIZE
    # the portable embedding kernel reads the fp32 table, a constant outside the delegate
    assert parts["constants read by kernels"] >= 4 * args.vocab_size * args.dim
    # every linear's fp32 weight (the tied output head included) is in the delegate's data
    kv = args.kv_heads * args.head_dim
    linears = args.n_layers * (2 * args.dim**2 + 2 * args.dim * kv + 3 * args.dim * args.ffn_hidden_dim)
    assert parts["delegate weights"] >= 4 * (linears + args.vocab_size * args.dim)
