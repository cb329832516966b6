"""PteDecoder: stories260K .pte programs (both designs with XNNPACK, and portable) against eager PyTorch.

The reference is the eager model with its KV cache (`EagerDecoder`): logits within 1e-4 for a
prefill and decode steps, greedy and seeded sampling identical token for token. Then every bad
input: missing, truncated, random-bytes and foreign programs, prompts and positions past the cache.

Run time: about 6 minutes on 2 busy cores, nearly all of it the three exports.
"""

import subprocess
import sys

import pytest
import torch

from llama2_et.designs import SIGNATURES
from llama2_et.generate import EagerDecoder, Sampler, generate
from llama2_et.runtime import PteDecoder

pytestmark = pytest.mark.slow

# Both designs on XNNPACK; the portable kernels through the preproc design (each export costs ~30 s)
VARIANTS = [("gather", "xnnpack"), ("preproc", "xnnpack"), ("preproc", "portable")]


@pytest.fixture(scope="module")
def programs(stories260k_pte):
    """One .pte per (design, backend), shared with the other test modules (conftest.py)."""
    return {variant: stories260k_pte(*variant) for variant in VARIANTS}


@pytest.fixture
def eager(stories260k):
    decoder = EagerDecoder(stories260k)
    decoder.reset()
    return decoder


@pytest.mark.parametrize("design,backend", VARIANTS)
def test_logits_equal_eager_for_prefill_and_decode(programs, design, backend, eager, tok512, pte_context):
    pte = PteDecoder(programs[design, backend])
    expected_inputs = SIGNATURES[design]
    assert (pte.signature, pte.max_seq_len, pte.vocab_size) == (
        expected_inputs,
        pte_context,
        tok512.vocab_size,
    )
    pte.reset()
    ids = tok512.encode("Once upon a time, in a small town", bos=True)
    expected, got = eager.step(ids, 0), pte.step(ids, 0)
    assert got.shape == (tok512.vocab_size,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    pos = len(ids)
    for _ in range(6):
        token = int(expected.argmax())
        expected, got = eager.step([token], pos), pte.step([token], pos)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        pos += 1


@pytest.mark.parametrize("design", ["gather", "preproc"])
def test_greedy_generation_equals_eager(programs, design, eager, tok512, pte_context):
    prompt = tok512.encode("Once upon a time", bos=True)
    budget = pte_context - len(prompt)
    expected = list(generate(eager, prompt, budget, Sampler()))
    assert len(expected) > 50
    assert list(generate(PteDecoder(programs[design, "xnnpack"]), prompt, budget, Sampler())) == expected


def test_same_seed_gives_the_same_sampled_tokens_as_eager(programs, eager, tok512):
    prompt = tok512.encode("Tom had a dog", bos=True)
    pte = PteDecoder(programs["gather", "xnnpack"])
    sample = dict(temperature=0.9, top_p=0.9, seed=1234)
    expected = list(generate(eager, prompt, 80, Sampler(**sample)))
    assert list(generate(pte, prompt, 80, Sampler(**sample))) == expected
    assert list(generate(pte, prompt, 80, Sampler(**sample))) == expected  # again, after reset()
    assert list(generate(pte, prompt, 80, Sampler(**{**sample, "seed": 4321}))) != expected


def test_reset_starts_a_fresh_sequence(programs, tok512):
    """A long first sequence leaves keys in the cache; a second, shorter one must not see them."""
    path = programs["preproc", "xnnpack"]
    used = PteDecoder(path)
    list(generate(used, tok512.encode("Lily and Ben went to the beach", bos=True), 60, Sampler()))
    prompt = tok512.encode("The cat", bos=True)
    assert list(generate(used, prompt, 40, Sampler())) == list(
        generate(PteDecoder(path), prompt, 40, Sampler())
    )


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pte.*llama2_et export"):
        PteDecoder(tmp_path / "missing.pte")


def test_truncated_program(programs, tmp_path):
    data = programs["gather", "xnnpack"].read_bytes()
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pte.*(truncated|corrupt)"):
        PteDecoder(truncated)


def test_random_bytes(tmp_path):
    noise = tmp_path / "noise.pte"
    noise.write_bytes(
        torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        .numpy()
        .tobytes()
    )
    with pytest.raises(ValueError, match="noise.pte is not an ExecuTorch program"):
        PteDecoder(noise)


def foreign_program(path, inputs, constant_methods=None):
    """A valid .pte of some other model: forward(*inputs) = their sum, with optional metadata."""
    from executorch.exir import to_edge_transform_and_lower

    class Sum(torch.nn.Module):
        def forward(self, *xs):
            return sum(x.float().sum() for x in xs)

    exported = torch.export.export(Sum(), inputs)
    path.write_bytes(
        to_edge_transform_and_lower(exported, constant_methods=constant_methods).to_executorch().buffer
    )
    return path


def test_program_without_llm_metadata(tmp_path):
    pte = foreign_program(tmp_path / "sum.pte", (torch.zeros(1, 3, dtype=torch.long),))
    with pytest.raises(
        ValueError, match="sum.pte lacks the metadata methods get_max_seq_len, get_vocab_size"
    ):
        PteDecoder(pte)


def test_program_with_other_inputs(tmp_path):
    meta = {"get_max_seq_len": 16, "get_vocab_size": 32}
    three = foreign_program(tmp_path / "three.pte", (torch.zeros(1, 3, dtype=torch.long),) * 3, meta)
    with pytest.raises(ValueError, match="three.pte: forward takes 3 inputs"):
        PteDecoder(three)
    floats = foreign_program(tmp_path / "floats.pte", (torch.zeros(1, 3), torch.zeros(1)), meta)
    with pytest.raises(
        ValueError,
        match="floats.pte: forward input dtypes .* do not match the inputs 2 \(tokens, input_pos\)",
    ):
        PteDecoder(floats)


def test_prompt_past_max_seq_len(programs, pte_context):
    pte = PteDecoder(programs["gather", "xnnpack"])
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        list(generate(pte, [1] * (pte_context - 3), 10, Sampler()))
    with pytest.raises(
        ValueError, match=r"0..128 run past the end of the cache of .*gather_xnnpack.pte \(128 positions"
    ):
        pte.step([1] * (pte_context + 1), 0)


def test_decode_past_the_cache_end_and_out_of_order(programs, pte_context):
    pte = PteDecoder(programs["preproc", "xnnpack"])
    pte.reset()
    pte.step([1] * pte_context, 0)  # fills the cache exactly
    with pytest.raises(
        ValueError, match=f"positions {pte_context}..{pte_context} run past the end of the cache"
    ):
        pte.step([5], pte_context)
    pte.reset()
    pte.step([1, 5, 6], 0)
    with pytest.raises(ValueError, match="start_pos=7 but the cache holds positions 0..2"):
        pte.step([7], 7)
    with pytest.raises(ValueError, match=r"token ids \[512\] are outside the vocabulary 0..511"):
        pte.step([512], 3)


def test_runtime_stops_at_the_eos_the_program_declares(stories260k_eos_pte):
    path, prompt, expected = stories260k_eos_pte
    pte = PteDecoder(path)
    assert len(pte.stop_ids) == 1 and pte.stop_ids[0] not in (1, 2)
    assert list(generate(pte, prompt, 60, Sampler())) == expected


LOAD_AND_MEASURE = """
import sys
from llama2_et.bench.memory import status_kib
from llama2_et.runtime import PteDecoder
import executorch.runtime  # the runtime's own libraries, before the measure
before = status_kib("VmRSS")
decoder = PteDecoder(sys.argv[1])
print(len(decoder.buckets), (status_kib("VmRSS") - before) * 1024)
"""


def test_bucketed_program_packs_each_weight_once(tmp_path):
    """Loading every method of a bucketed program adds its weights about once, not once per method.

    XNNPACK packs a delegate's weights when its method loads; `share_packed_weights` (on for any
    program with buckets) makes the methods share one packed copy. Seven methods packing their own
    would add seven times the weights. Measured in a fresh process: this one's heap holds the
    export's freed memory, which a load would reuse unseen.
    """
    from llama2_et.config import ModelArgs
    from llama2_et.export import export_pte
    from llama2_et.model import Transformer

    args = ModelArgs(dim=256, n_layers=4, n_heads=4, vocab_size=512, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(args).eval()
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())  # fp32
    path = export_pte(model, tmp_path / "buckets.pte", buckets=(8, 16, 24, 32, 40, 48)).path
    run = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    buckets, grown = map(int, run.stdout.split()[-2:])
    assert buckets == 6
    assert grown < 2.5 * weight_bytes, (
        f"loading added {grown / 2**20:.1f} MiB for {weight_bytes / 2**20:.1f} MiB of weights"
    )
