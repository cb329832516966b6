"""llama2_et::filled_attention: the eager op's causal reach, its kernel in every runtime against eager.

(tests/test_transforms.py checks the model with the op against eager, to the end of the cache.)
The kernel (cpp/filled_attention.cpp) runs in the ExecuTorch Python runtime, in TextLLMRunner and in
our C++ runner; each is checked against eager PyTorch on the real stories260K.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from llama2_et import kernels
from llama2_et.export import export_pte
from llama2_et.generate import EagerDecoder, Sampler, generate, generate_text

PROMPT = "Once upon a time, there was a little girl named Lily."


def test_reference_op_attends_to_positions_up_to_the_query():
    """Row r attends to positions 0..positions[r % L]: whatever lies beyond them changes nothing."""
    torch.manual_seed(0)
    nkv, rep, n_tokens, dh, lm = 2, 3, 4, 8, 16
    q = torch.randn(nkv, rep * n_tokens, dh)
    keys, values = torch.randn(nkv, dh, lm), torch.randn(nkv, lm, dh)
    positions = torch.arange(n_tokens) + 5  # tokens at 5..8
    out = torch.ops.llama2_et.filled_attention(q, keys, values, positions)
    keys[:, :, 9:], values[:, 9:] = 1e4, -1e4  # past the last token: never read
    assert torch.equal(torch.ops.llama2_et.filled_attention(q, keys, values, positions), out)
    # row r = i * L + l (query head i of the group, token l): attention over positions 0..5 + l
    for row in range(rep * n_tokens):
        filled = 5 + row % n_tokens + 1
        probs = torch.softmax(q[:, row : row + 1] @ keys[:, :, :filled], dim=-1)
        assert torch.allclose(out[:, row : row + 1], probs @ values[:, :filled], atol=1e-6)


def test_export_refuses_filled_attention_outside_the_gather_forward(stories260k, tmp_path):
    for options in ({"design": "preproc"}, {"design": "gather", "buckets": (16,)}):
        with pytest.raises(ValueError, match="xnnpack-filled .* design='gather' and no buckets"):
            export_pte(stories260k, tmp_path / "x.pte", backend="xnnpack-filled", **options)
    assert not (tmp_path / "x.pte").exists()


@pytest.fixture(scope="module")
def filled_pte(stories260k_pte):
    return stories260k_pte("gather", "xnnpack-filled")


@pytest.fixture(scope="module")
def eager_greedy(stories260k, tok512):
    """Prompt ids, eager's greedy ids after them, and the text after the prompt."""
    decoder = EagerDecoder(stories260k)
    decoder.reset()
    ids = tok512.encode(PROMPT)
    new_ids = list(generate(decoder, ids, 40, Sampler(0.0)))
    pieces = list(generate_text(decoder, tok512, PROMPT, 40, Sampler(0.0)))
    return ids, new_ids, "".join(pieces[1:])


@pytest.mark.slow
def test_program_calls_the_op_and_matches_eager_in_python(filled_pte, stories260k, eager_greedy):
    from llama2_et.runtime import PteDecoder

    assert kernels.calls_kernels(filled_pte)
    decoder = PteDecoder(filled_pte)
    assert kernels.load_kernel_library().is_file()  # loaded by PteDecoder, once per process
    eager = EagerDecoder(stories260k)
    eager.reset()
    ids, new_ids, _ = eager_greedy
    worst = (decoder.step(ids, 0) - eager.step(ids, 0)).abs().max().item()
    for pos, token in enumerate(new_ids[:-1], start=len(ids)):  # eager's tokens fill the cache
        worst = max(worst, (decoder.step([token], pos) - eager.step([token], pos)).abs().max().item())
    assert worst < 1e-4
    decoder.reset()
    assert list(generate(decoder, ids, len(new_ids), Sampler(0.0))) == new_ids


@pytest.mark.slow
def test_text_runner_and_cpp_runner_run_the_op(filled_pte, data_dir, eager_greedy):
    from llama2_et.cpp import build_runner
    from llama2_et.export_llm import TextRunner

    ids, new_ids, text = eager_greedy
    assert TextRunner(filled_pte, data_dir / "tok512.model").generate(PROMPT, len(new_ids)).text == text
    command = [str(build_runner()), "--model", str(filled_pte), "--tokenizer", str(data_dir / "tok512.bin")]
    result = subprocess.run(
        [*command, "--prompt", PROMPT, "--steps", str(len(new_ids)), "--print-tokens"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [int(t) for t in result.stdout.split()] == ids + new_ids


@pytest.mark.slow
def test_kernel_tiles_equal_eager_with_grouped_heads(tmp_path):
    """Head dim 48 (stories15M's): register tiles plus a remainder; 2 query heads per key/value head;
    a 37-token prefill (blocks of 8 rows and a shorter last one), decode steps, a 32-token chunk whose
    last tile of packed keys the 90-position cache's end cuts short, then decode steps to that end
    (one row's tiles of 64 positions, then of 16, 8 and single positions)."""
    from llama2_et.config import ModelArgs
    from llama2_et.model import Transformer
    from llama2_et.runtime import PteDecoder

    torch.manual_seed(0)
    args = ModelArgs(dim=192, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=90)
    model = Transformer(args).eval()
    with torch.no_grad():  # logits of a few units, as a trained model's, not the hundreds of a random head
        model.output.weight.mul_(0.02)
    export_pte(model, tmp_path / "tiles.pte", backend="xnnpack-filled")
    decoder, eager = PteDecoder(tmp_path / "tiles.pte"), EagerDecoder(model)
    prompt = torch.randint(3, 512, (37,), generator=torch.Generator().manual_seed(2)).tolist()
    worst = (decoder.step(prompt, 0) - eager.step(prompt, 0)).abs().max().item()
    for pos in [*range(37, 42), *range(74, 90)]:
        if pos == 74:  # positions 42..73: 4 full blocks, the last reads 73 (packed to 96, cut at 90)
            chunk = [(7 * i) % 509 + 3 for i in range(32)]
            worst = max(worst, (decoder.step(chunk, 42) - eager.step(chunk, 42)).abs().max().item())
        token = (pos * 7) % 512
        worst = max(worst, (decoder.step([token], pos) - eager.step([token], pos)).abs().max().item())
    assert worst < 1e-4


SHAPE = (2, 6, 8, 7)  # a cache of 6, 8 or 7 positions along dim 1, 2 or 3


class _CacheWriter(torch.nn.Module):
    """A (2, 6, 8, 7) cache written by the op along `dim`, returned whole (plus zero: a copy)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("cache", torch.zeros(SHAPE), persistent=False)

    def forward(self, source: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        torch.ops.llama2_et.write_cache(source, self.cache, positions, self.dim)
        return self.cache + 0


@pytest.mark.slow
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_write_cache_kernel_equals_index_copy(dim, tmp_path):
    """Runs of consecutive positions and single ones, two calls into the same cache, at each dim."""
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    kernels.load_kernel_library()
    size = SHAPE[dim]
    writer = _CacheWriter(dim).eval()
    example = torch.zeros(*(n if d != dim else 2 for d, n in enumerate(SHAPE)))
    count = torch.export.Dim("count", min=1, max=size)
    with torch.no_grad():
        exported = torch.export.export(
            writer, (example, torch.arange(2)), dynamic_shapes=({dim: count}, {0: count})
        )
    pte = tmp_path / "write.pte"
    pte.write_bytes(to_edge(exported).to_executorch().buffer)
    method = Runtime.get().load_program(pte).load_method("forward")
    expected = torch.zeros(SHAPE)
    torch.manual_seed(0)
    for positions in ([size - 3, size - 2, size - 1, 0, 2], [1, 3, 4]):  # a run, a gap; then singles
        positions = torch.tensor(positions)
        shape = list(expected.shape)
        shape[dim] = len(positions)
        source = torch.randn(shape)
        expected.index_copy_(dim, positions, source)
        (got,) = method.execute([source, positions])
        assert torch.equal(got, expected)
