"""designs.py: the three program designs compute the same logits as the eager model with its cache.

Reference: the eager Transformer, forward(tokens, input_pos), over the whole cache (checked against
transformers' Llama in test_model.py), prefill then decode to the last position of the cache.
The preproc design, fed filled-prefix masks, attends pos + L cache positions only; every backend's
prepared model and the exported .pte must still agree with the reference.
Run time: a few seconds, plus about a minute per exported program for the slow tests.
"""

import inspect

import pytest
import torch

from llama2_et.config import ModelArgs
from llama2_et.designs import (
    DESIGNS,
    SIGNATURES,
    bucket_method,
    bucket_programs,
    bucket_width,
    check_buckets,
    program,
    program_and_inputs,
)
from llama2_et.export import export_pte, prepare_for_export
from llama2_et.generate import EagerDecoder, Sampler, generate
from llama2_et.model import Transformer
from llama2_et.runtime import PteDecoder
from llama2_et.windows import TableWindows

GQA = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=97, max_seq_len=32)
PROMPT = [1, 40, 7, 33, 90, 12, 5, 61, 8]


def random_model(args: ModelArgs = GQA) -> Transformer:
    torch.manual_seed(0)
    return Transformer(args).eval().setup_kv_cache()


def eager_logits(model: Transformer, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens that fill the cache, and eager's logits of the prefill and of a step at every position after."""
    decoder = EagerDecoder(model)
    tokens = list(generate(decoder, prompt, model.args.max_seq_len - len(prompt), Sampler(), stop_ids=()))
    decoder.reset()
    return tokens, replayed(decoder.step, prompt, tokens)


def inputs_at(
    design: str, pre: TableWindows, tokens: list[int], start: int, filled_only: bool = True
) -> tuple:
    """A design's forward inputs for tokens at positions start..: the preproc design's mask as asked."""
    x = torch.tensor([tokens])  # (1, L)
    if design == "preproc":
        return (x, *pre.window(start, len(tokens), filled_only=filled_only))
    return (x, torch.tensor([start]))


def replayed(step, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits (V,) of step(ids, start) for the prompt, then for each given token in turn."""
    logits = [step(prompt, 0)]
    for i, token in enumerate(tokens):
        logits.append(step([token], len(prompt) + i))
    return logits


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("backend", ["portable", "xnnpack"])
def test_design_equals_eager_to_the_last_cache_position(design, backend):
    reference = random_model()
    tokens, expected = eager_logits(reference, PROMPT)
    prepared = prepare_for_export(reference, backend)
    program, example, _ = program_and_inputs(prepared, design)
    assert len(example) == len(SIGNATURES[design].names)
    pre = TableWindows.for_model(GQA)
    with torch.no_grad():
        got = replayed(lambda ids, start: program(*inputs_at(design, pre, ids, start))[0], PROMPT, tokens)
    assert len(got) == len(expected) == GQA.max_seq_len - len(PROMPT) + 1  # the last step at position Lm - 1
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_preproc_design_accepts_the_whole_cache_mask_too():
    """A caller that slices the mask over every cache slot (L, Lm) gets the same logits."""
    model = prepare_for_export(random_model(), "xnnpack")
    program, _, _ = program_and_inputs(model, "preproc")
    pre = TableWindows.for_model(GQA)
    with torch.no_grad():
        narrow = [program(*inputs_at("preproc", pre, PROMPT, 0)), program(*inputs_at("preproc", pre, [3], 9))]
        model.reset_kv_cache()
        full = [
            program(*inputs_at("preproc", pre, PROMPT, 0, filled_only=False)),
            program(*inputs_at("preproc", pre, [3], 9, filled_only=False)),
        ]
    for n, f in zip(narrow, full, strict=True):
        torch.testing.assert_close(n, f, atol=1e-5, rtol=1e-5)


def test_attention_reads_as_many_cache_positions_as_the_mask_has_columns():
    """Decode with a filled-prefix mask reads pos + L cache positions; a whole-cache mask reads Lm."""
    model = random_model()
    cache = model.layers[0].attention.kv_cache
    k = v = torch.zeros(1, GQA.n_kv_heads, 1, GQA.head_dim)
    keys, values = cache.update(torch.tensor([9]), k, v, 10)
    assert keys.shape[2] == values.shape[2] == 10
    assert cache.update(torch.tensor([9]), k, v, GQA.max_seq_len)[0] is cache.k_cache  # no copy


def test_every_design_has_one_program_taking_its_signature():
    model = Transformer(GQA)
    for design in DESIGNS:
        params = inspect.signature(program(model, design).forward).parameters
        assert tuple(params) == SIGNATURES[design].names
    assert program(model, "gather") is model  # the gather program is the model itself
    with pytest.raises(ValueError, match="unknown design 'fused'; choose one of narrow, preproc, gather"):
        program_and_inputs(Transformer(GQA), "fused")


def narrowest(widths: tuple[int, ...], end: int) -> int:
    """The width a runtime picks for positions ..end-1: the narrowest bucket covering them."""
    return min(w for w in widths if end <= w)


@pytest.mark.parametrize("backend", ["portable", "xnnpack"])
def test_buckets_sharing_one_cache_equal_eager_across_their_boundaries(backend):
    """forward_8, forward_16 and forward (32) of one prepared model, each step through the narrowest
    that covers it: a prefill in one bucket, decode through the next ones, eager's logits throughout."""
    reference = random_model()
    prompt = PROMPT[:5]
    tokens, expected = eager_logits(reference, prompt)
    methods = bucket_programs(prepare_for_export(reference, backend), (16, 8))
    assert list(methods) == ["forward_8", "forward_16", "forward"]
    widths = {name: module.width for name, (module, _, _) in methods.items()}
    assert widths == {"forward_8": 8, "forward_16": 16, "forward": GQA.max_seq_len}
    by_width = {module.width: module for module, _, _ in methods.values()}
    used = []

    def step(ids: list[int], start: int) -> torch.Tensor:
        used.append(narrowest(tuple(by_width), start + len(ids)))
        return by_width[used[-1]](torch.tensor([ids]), torch.tensor([start]))[0]

    with torch.no_grad():
        got = replayed(step, prompt, tokens)
    assert sorted(set(used)) == [8, 16, GQA.max_seq_len]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_bucket_names_and_widths():
    assert bucket_method(256) == "forward_256" and bucket_width("forward_256") == 256
    assert bucket_width("forward") is None and bucket_width("get_max_seq_len") is None
    assert check_buckets((16, 8, 16), 32) == (8, 16)
    with pytest.raises(ValueError, match=r"bucket widths \[32, 1\] must be in 2..31"):
        check_buckets((8, 32, 1), 32)
    with pytest.raises(ValueError, match="width=33 must be in 1..32"):
        random_model().attend_prefix(torch.tensor([[1]]), torch.tensor([0]), 33)


def pte_step(decoder: PteDecoder, design: str, pre: TableWindows):
    """A step of the .pte through its method, the preproc design fed filled-prefix masks."""

    def step(ids: list[int], start: int) -> torch.Tensor:
        if design != "preproc":
            return decoder.step(ids, start)
        return decoder.method.execute(list(inputs_at(design, pre, ids, start)))[0].reshape(-1)

    return step


@pytest.mark.slow
@pytest.mark.parametrize("design", ["gather", "preproc"])
@pytest.mark.parametrize("backend", ["portable", "xnnpack"])
def test_exported_program_equals_eager_to_the_last_cache_position(design, backend, tmp_path):
    model = random_model()
    tokens, expected = eager_logits(model, PROMPT)
    decoder = PteDecoder(export_pte(model, tmp_path / "m.pte", design=design, backend=backend).path)
    decoder.reset()
    got = replayed(pte_step(decoder, design, TableWindows.for_model(GQA)), PROMPT, tokens)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_long_context_program_runs_to_its_last_position(tmp_path):
    """A 1024-position gather .pte on XNNPACK: a 480-token prompt, then decode to position 1023."""
    args = GQA.replace(max_seq_len=1024, vocab_size=64)
    model = random_model(args)
    prompt = [1] + [(7 * i) % 60 + 3 for i in range(479)]
    tokens, expected = eager_logits(model, prompt)
    decoder = PteDecoder(export_pte(model, tmp_path / "long.pte").path)
    got = replayed(decoder.step, prompt, tokens)
    assert decoder.cached == args.max_seq_len
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_the_mask_is_built_once_per_step_for_every_layer(tmp_path):
    """The gather program on XNNPACK stacks the mask rows for a group's query heads once, not per layer."""
    from llama2_et.figures.program import forward_plan, planned_tensors, read_pte

    report = export_pte(random_model(), tmp_path / "m.pte", backend="xnnpack")
    assert report.portable_ops["cat"] == 1 < GQA.n_layers
    rep = GQA.n_heads // GQA.n_kv_heads
    stacked = (rep * GQA.max_seq_len, GQA.max_seq_len)  # (rep*L, Lm) at L = Lm, the planned bound
    plan = forward_plan(read_pte(report.path).program)
    assert sum(t.sizes == stacked for t in planned_tensors(plan)) == 1


@pytest.mark.slow
def test_the_preproc_program_drops_the_tables_it_never_reads():
    """The preproc program wraps the model but is fed slices: its export keeps no RoPE table or mask."""
    from llama2_et.export import drop_unread_buffers

    model = prepare_for_export(random_model(), "xnnpack")
    tables = {"rope_cos", "rope_sin", "causal_mask"}
    for design, dropped in (("preproc", tables), ("gather", set()), ("narrow", set())):
        module, inputs, shapes = program_and_inputs(model, design)
        with torch.no_grad():
            exported = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
            names = drop_unread_buffers(exported)
            assert {name.rsplit(".", 1)[-1] for name in names} == dropped, design
            model.reset_kv_cache()
            expected = module(*inputs)
            model.reset_kv_cache()
            torch.testing.assert_close(exported.module()(*inputs), expected)


@pytest.mark.slow
def test_bucketed_program_shares_one_cache_and_stores_its_weights_once(tmp_path):
    """A gather .pte with buckets 8 and 16 on XNNPACK: eager's logits from a prefill in forward_8
    through decode in forward_16 and forward; weights and the cache's zeros stored once."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    model = random_model()
    prompt = PROMPT[:5]
    tokens, expected = eager_logits(model, prompt)
    plain = export_pte(model, tmp_path / "plain.pte").path
    bucketed = export_pte(model, tmp_path / "bucketed.pte", buckets=(8, 16)).path
    decoder = PteDecoder(bucketed)
    assert [width for width, _ in decoder.buckets] == [8, 16]
    got = replayed(decoder.step, prompt, tokens)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    decoder.reset()  # a second sequence, shorter: the first one's keys are never read
    torch.testing.assert_close(decoder.step(prompt, 0), expected[0], atol=1e-4, rtol=1e-4)

    files = {
        "plain": deserialize_pte_binary(plain.read_bytes()),
        "b": deserialize_pte_binary(bucketed.read_bytes()),
    }
    for f in files.values():
        assert f.named_data is not None
    weights = {name: sum(len(b) for b in f.named_data.buffers) for name, f in files.items()}
    zeros = {name: sum(len(b.storage) for b in f.mutable_data) for name, f in files.items()}
    assert weights["b"] == weights["plain"] and zeros["b"] == zeros["plain"]
    plans = {p.name: p for p in files["b"].program.execution_plan if p.name.startswith("forward")}
    assert set(plans) == {"forward", "forward_8", "forward_16"}

    def shared_state(plan) -> tuple[set[tuple[int, tuple[int, ...]]], int]:
        """The (offset, shape) of each tensor in the shared arena (memory id 2), and how many carry initial data."""
        tensors = [v.val for v in plan.values if getattr(v.val, "allocation_info", None) is not None]
        shared = [t for t in tensors if t.allocation_info.memory_id == 2]
        return {(t.allocation_info.memory_offset_low, tuple(t.sizes)) for t in shared}, sum(
            t.data_buffer_idx > 0 for t in shared
        )

    places, initialized = shared_state(plans["forward"])
    assert len(places) == 2 * GQA.n_layers and initialized == 2 * GQA.n_layers  # every layer's k and v
    assert shared_state(plans["forward_8"]) == shared_state(plans["forward_16"]) == (places, 0)
