"""export.py: the runner metadata, the delegation report, quantization, the stop ids, bad arguments.

References: ExecuTorch's own llama export (the metadata its TextLLMRunner reads), ExecuTorch's
delegation info (the report), torchao's eager quantized model (the quantized programs) and the
eager model (greedy tokens). A one-layer model carved from stories260K keeps the exports short;
test_runtime.py covers the full stories260K programs, test_transforms.py the swapped modules.

Run time: about 7 minutes on 2 busy cores, most of it the seven exports.
"""

import json
from collections import Counter

import pytest
import torch

from llama2_et import contract
from llama2_et.__main__ import main
from llama2_et.checkpoint.llama2c import save_llama2c_bin
from llama2_et.export import ExportReport, export_pte, prepare_for_export
from llama2_et.generate import EagerDecoder, Recorder, Sampler, generate, generate_text, teacher_forced
from llama2_et.model import Transformer
from llama2_et.quantize import QuantizedEmbedding, quantize_linears
from llama2_et.runtime import PteDecoder

pytestmark = pytest.mark.slow

CONTEXT = 64
PORTABLE_OPS_OF_XNNPACK = {"embedding", "index_put", "index_select", "arange.start_step", "add.Tensor"}
PORTABLE_OPS_OF_XNNPACK |= {"select_copy.int", "sym_size.int"}
PORTABLE_OPS_OF_XNNPACK |= {"cat"}  # the mask rows repeated for the query heads that share a K/V head


@pytest.fixture(scope="module")
def one_layer(stories260k) -> Transformer:
    """stories260K's embedding, first layer, norm and classifier: real weights, a short export."""
    model = Transformer(stories260k.args.replace(n_layers=1)).eval()
    state = {
        k: v
        for k, v in stories260k.state_dict().items()
        if not k.startswith("layers.") or k.startswith("layers.0.")
    }
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def exported(one_layer, tmp_path_factory) -> dict[str, ExportReport]:
    out = tmp_path_factory.mktemp("export")
    return {
        "xnnpack": export_pte(one_layer, out / "xnnpack.pte", "gather", "xnnpack", max_seq_len=CONTEXT),
        "narrow": export_pte(one_layer, out / "narrow.pte", "narrow", "xnnpack", max_seq_len=CONTEXT),
        "portable": export_pte(one_layer, out / "portable.pte", "preproc", "portable", max_seq_len=CONTEXT),
        "8da8w": export_pte(one_layer, out / "8da8w.pte", "preproc", "xnnpack", "8da8w", max_seq_len=CONTEXT),
        "8da4w": export_pte(one_layer, out / "8da4w.pte", "preproc", "xnnpack", "8da4w", max_seq_len=CONTEXT),
    }


def cached_logits(model: Transformer, ids: list[int], steps: int) -> list[torch.Tensor]:
    """Logits (V,) of a prefill then greedy decode steps, through model's own cache (any modules)."""
    recorder = Recorder(EagerDecoder(model))
    list(generate(recorder, ids, steps + 1, Sampler(), stop_ids=()))
    return recorder.logits


def test_metadata_is_what_executorch_llama_export_writes(exported, one_layer):
    """Every constant method of ExecuTorch's own llama export, with the same values, plus ours."""
    from executorch.examples.models.llama.export_llama_lib import _load_llama_model_metadata

    args = one_layer.args
    theirs = _load_llama_model_metadata(
        use_kv_cache=True,
        use_sdpa_with_kv_cache=False,
        enable_dynamic_shape=True,
        max_seq_len=CONTEXT,
        max_context_len=CONTEXT,
        n_layers=args.n_layers,
        vocab_size=args.vocab_size,
        metadata_str=json.dumps(
            {contract.GET_BOS_ID: contract.BOS_ID, contract.GET_EOS_IDS: list(contract.STOP_IDS)}
        ),
    )
    ours = PteDecoder(exported["xnnpack"].path).metadata
    assert {name: ours[name] for name in theirs} == theirs
    assert ours["get_head_dim"] == args.head_dim and ours["get_rope_theta"] == args.rope_theta


def op_name(name: str) -> str:
    """An operator as the edge graph and the .pte both name it: no namespace, overload or in-place mark."""
    return name.removeprefix("aten::").split(".")[0].rstrip("_")


def serialized_calls(path) -> Counter:
    """Kernel calls by operator, and delegate calls ("delegate"), of the forward chain stored in a .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    calls = Counter()
    for instruction in plan.chains[0].instructions:
        call = instruction.instr_args
        if type(call).__name__ == "KernelCall":
            calls[op_name(plan.operators[call.op_index].name)] += 1
        elif type(call).__name__ == "DelegateCall":
            calls["delegate"] += 1
    return calls


def test_report_counts_what_was_delegated(exported, one_layer):
    xnn, portable = exported["xnnpack"], exported["portable"]
    linears = [m for m in one_layer.modules() if isinstance(m, torch.nn.Linear)]
    # the file holds every fp32 weight; XNNPACK's twice the tied table: for the portable embedding
    # kernel and, packed, for the classifier inside the delegate
    weights = 4 * sum(p.numel() for p in one_layer.parameters())
    assert portable.pte_bytes >= weights and xnn.pte_bytes >= weights + 4 * one_layer.output.weight.numel()
    # counted on the edge graph, the calls are those of the serialized program's instructions
    calls = serialized_calls(xnn.path)
    assert calls.pop("delegate") == xnn.delegate_calls and serialized_calls(portable.path)["delegate"] == 0
    assert calls == sum((Counter({op_name(op): n}) for op, n in xnn.portable_ops.items()), Counter())
    assert xnn.portable_nodes == sum(calls.values())
    # one call per layer between its two cache writes, one before the first and one for the classifier
    assert xnn.delegate_calls == one_layer.args.n_layers + 2 and xnn.delegated_nodes > 50
    assert set(xnn.portable_ops) <= PORTABLE_OPS_OF_XNNPACK and xnn.portable_ops["index_put"] == 2
    assert portable.delegate_calls == portable.delegated_nodes == 0
    assert portable.portable_ops["linear"] >= len(linears) and "mm" not in portable.portable_ops
    assert "delegated: " in xnn.summary() and str(xnn.path) in xnn.summary()


def test_narrow_design_leaves_what_the_slice_feeds_to_portable_kernels(exported):
    """The narrowed tables have a size XNNPACK cannot prove non-empty: RoPE's matmuls stay portable."""
    narrow, gather = exported["narrow"], exported["xnnpack"]
    assert "mm" in narrow.portable_ops and "mm" not in gather.portable_ops
    assert narrow.portable_nodes > gather.portable_nodes
    assert "_local_scalar_dense" in narrow.portable_ops  # the start, read from the input_pos tensor


@pytest.mark.parametrize("scheme", ["8da8w", "8da4w"])
def test_quantized_program_computes_torchao_quantized_model(exported, one_layer, scheme):
    """The .pte runs torchao's quantized eager model (not fp32's), with every linear delegated.

    8da8w matches to rounding. 8da4w's XNNPACK kernel stores each group's scale in bfloat16
    (executorch's xnnpack node_visitor), so there the check is: far closer to torchao's model
    than to fp32, and the same greedy tokens.
    """
    report = exported[scheme]
    group = 32
    linears = [m for m in one_layer.modules() if isinstance(m, torch.nn.Linear)]
    expected_count = len(linears) if scheme == "8da8w" else sum(m.in_features % group == 0 for m in linears)
    assert report.quantized_linears == expected_count
    # a preproc program: it also copies out the filled prefix of each K and V cache for attention
    assert set(report.portable_ops) <= PORTABLE_OPS_OF_XNNPACK | {"slice_copy.Tensor"}
    reference = prepare_for_export(one_layer, "xnnpack", CONTEXT)
    quantize_linears(reference, scheme, group)
    ids = [1, 403, 407, 261, 378]
    expected = cached_logits(reference, ids, 5)
    fp32 = cached_logits(prepare_for_export(one_layer, "xnnpack", CONTEXT), ids, 5)
    got = teacher_forced(PteDecoder(report.path), ids, [int(e.argmax()) for e in expected])
    error = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
    error_fp32 = max((g - f).abs().max().item() for g, f in zip(got, fp32, strict=True))
    assert [int(g.argmax()) for g in got] == [int(e.argmax()) for e in expected]
    assert error < (2e-3 if scheme == "8da8w" else error_fp32 / 10)
    assert error_fp32 > 1e-2  # it really is quantized


def torchao_table(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The table (V, D) as torchao's weight-only quantization dequantizes it."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    table = torch.nn.Embedding.from_pretrained(weight.detach().clone())
    config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group_size))
    quantize_(table, config, filter_fn=lambda module, name: isinstance(module, torch.nn.Embedding))
    return table.weight.dequantize()


@pytest.mark.parametrize("bits, group_size", [(8, 64), (8, 16), (4, 32), (4, 64)])
def test_quantized_embedding_reads_torchao_table(one_layer, bits, group_size):
    """ExecuTorch's embedding_byte / embedding_4bit on our packed table give torchao's dequantized rows."""
    weight = one_layer.tok_embeddings.weight
    ids = torch.tensor([[1, 0, 511, 403, 7]])
    got = QuantizedEmbedding(weight, bits, group_size)(ids)  # (1, 5, D)
    torch.testing.assert_close(got, torchao_table(weight, bits, group_size)[ids], atol=0, rtol=0)
    assert (got - weight[ids]).abs().max() > (1e-3 if bits == 8 else 1e-2)  # it really is quantized


@pytest.fixture(scope="module")
def embedding4(one_layer, tmp_path_factory) -> ExportReport:
    """one_layer with its token table in 4 bits (groups of 32), the linears fp32."""
    path = tmp_path_factory.mktemp("embedding") / "e4.pte"
    return export_pte(one_layer, path, max_seq_len=CONTEXT, quantize_embedding=4, embedding_group_size=32)


def test_quantized_embedding_program_keeps_the_tied_head_fp32(embedding4, one_layer):
    """stories260K ties the classifier to the table: the program quantizes the table, not the head.

    Reference: the eager model untied, its table replaced by torchao's 4-bit table, its head fp32.
    """
    import executorch.kernels.quantized  # noqa: F401  (the runtime's quantized_decomposed kernels)

    assert one_layer.output.weight is one_layer.tok_embeddings.weight
    report = embedding4
    assert (report.quantize_embedding, report.embedding_group_size) == (4, 32)
    assert (
        report.portable_ops["quantized_decomposed::embedding_4bit"] == 1
        and "embedding" not in report.portable_ops
    )
    assert "embedding 4-bit (groups of 32)" in report.summary()
    reference = Transformer(one_layer.args.replace(tie_embeddings=False, max_seq_len=CONTEXT)).eval()
    reference.load_state_dict(one_layer.state_dict())
    with torch.no_grad():
        reference.tok_embeddings.weight.copy_(torchao_table(one_layer.tok_embeddings.weight, 4, 32))
    ids, forced = [1, 403, 407, 261, 378], [30, 40, 500, 2, 1]
    expected = teacher_forced(EagerDecoder(reference), ids, forced)
    fp32 = teacher_forced(EagerDecoder(prepare_for_export(one_layer, "xnnpack", CONTEXT)), ids, forced)
    got = teacher_forced(PteDecoder(report.path), ids, forced)
    error = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
    error_fp32 = max((g - f).abs().max().item() for g, f in zip(got, fp32, strict=True))
    assert error < 1e-4 and error_fp32 > 1e-2


def test_bad_arguments(one_layer, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'coreml'"):
        export_pte(one_layer, tmp_path / "a.pte", backend="coreml")
    with pytest.raises(ValueError, match="unknown design 'fused'"):
        export_pte(one_layer, tmp_path / "a.pte", design="fused")
    with pytest.raises(ValueError, match="should end in .pte"):
        export_pte(one_layer, tmp_path / "a.bin")
    with pytest.raises(ValueError, match="max_seq_len=9999 must be in 1..512"):
        export_pte(one_layer, tmp_path / "a.pte", max_seq_len=9999)
    with pytest.raises(ValueError, match="unknown quantization '4w'"):
        export_pte(one_layer, tmp_path / "a.pte", quantize_scheme="4w")
    with pytest.raises(ValueError, match="max_seq_len=0 must be in 1..512"):
        export_pte(one_layer, tmp_path / "a.pte", max_seq_len=0)
    for bad in (0, -4):
        with pytest.raises(ValueError, match=f"group_size must be a positive number of inputs, got {bad}"):
            export_pte(one_layer, tmp_path / "a.pte", quantize_scheme="8da4w", group_size=bad)
    with pytest.raises(
        ValueError, match=r"group_size=7 divides none of the linears' input widths \[64, 172\]"
    ):
        export_pte(one_layer, tmp_path / "a.pte", quantize_scheme="8da4w", group_size=7)
    with pytest.raises(ValueError, match="quantize_embedding must be 4 or 8 .*got 2"):
        export_pte(one_layer, tmp_path / "a.pte", quantize_embedding=2)
    with pytest.raises(
        ValueError, match="embedding_group_size=48 must be a positive divisor of the model's dim 64"
    ):
        export_pte(one_layer, tmp_path / "a.pte", quantize_embedding=8, embedding_group_size=48)
    with pytest.raises(ValueError, match="embedding_group_size=32 given without quantize_embedding"):
        export_pte(one_layer, tmp_path / "a.pte", embedding_group_size=32)
    assert not (tmp_path / "a.pte").exists()


def test_cli_export_then_run_prints_the_eager_text(one_layer, tok512, tmp_path, capsys):
    checkpoint = save_llama2c_bin(one_layer, tmp_path / "one_layer.bin")
    pte = tmp_path / "one_layer.pte"
    args = [
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(pte),
        "--backend",
        "portable",
        "--max-seq-len",
        "48",
    ]
    assert main(["export", *args, "--design", "preproc"]) == 0
    assert f"wrote {pte}" in capsys.readouterr().out
    sampling = ["--tokenizer", str(tok512.path), "--prompt", "Once upon a time", "--max-new-tokens", "30"]
    assert main(["run", "--pte", str(pte), *sampling]) == 0
    expected = "".join(generate_text(EagerDecoder(one_layer), tok512, "Once upon a time", 30, Sampler()))
    assert capsys.readouterr().out == expected + "\n"
    assert main(["run", "--pte", str(tmp_path / "nope.pte"), *sampling]) == 1
    assert "nope.pte" in capsys.readouterr().err


def test_failed_write_leaves_the_previous_program_untouched(exported, one_layer, tmp_path, monkeypatch):
    """A full disk at the end of an export (simulated: fsync fails with ENOSPC) keeps the old .pte as it was."""
    import errno
    import os

    target = tmp_path / "kept.pte"
    target.write_bytes(exported["portable"].path.read_bytes())
    before = target.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        export_pte(one_layer, target, "gather", "xnnpack", max_seq_len=CONTEXT)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["kept.pte"]  # no temporary file left behind


@pytest.mark.parametrize("name", ["xnnpack", "portable"])
def test_kv_cache_starts_as_zeros_stored_in_the_program(exported, one_layer, name):
    """Each cache buffer is memory-planned (mutable state) and carries its initial zeros in the .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte_file = deserialize_pte_binary(exported[name].path.read_bytes())
    tensors = [v.val for v in pte_file.program.execution_plan[0].values if type(v.val).__name__ == "Tensor"]
    initialized = [t for t in tensors if t.allocation_info is not None and t.data_buffer_idx > 0]
    args = one_layer.args
    cache_values = args.kv_heads * CONTEXT * args.head_dim
    assert len(initialized) == 2 * args.n_layers  # k_cache and v_cache of every layer
    for t in initialized:
        assert torch.Size(t.sizes).numel() == cache_values
        data = pte_file.mutable_data[t.data_buffer_idx].storage  # initial values of mutable buffers
        assert len(data) == 4 * cache_values and not any(data)
