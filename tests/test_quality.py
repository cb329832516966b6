"""quality.py: perplexity, against the cross-entropy of a full forward pass, the uniform bound and the .pte.

References: PyTorch's cross_entropy over one forward pass of the whole window (no cache, no
generation loop), a model whose logits are all zero (perplexity exactly the vocabulary size), and
the fp32 .pte of the same model (the same number through ExecuTorch).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from llama2_et.__main__ import main
from llama2_et.generate import EagerDecoder
from llama2_et.model import Transformer
from llama2_et.quality import held_out_stories, held_out_tokens, perplexity

N_TOKENS = 300  # three windows of the 128-position test programs (overlapping by one token)


@pytest.fixture(scope="module")
def held_out(tok512) -> list[int]:
    return held_out_tokens(tok512, N_TOKENS)


def with_context(model: Transformer, context: int) -> Transformer:
    """A copy of model with a shorter context (the same weights)."""
    copy = Transformer(model.args.replace(max_seq_len=context)).eval()
    copy.load_state_dict(model.state_dict())
    return copy


@torch.no_grad()
def full_forward_nll(model: Transformer, window: list[int]) -> torch.Tensor:
    """NLL of window[1:], from one uncached forward pass over the window and PyTorch's cross_entropy."""
    x = torch.tensor([window])  # (1, L)
    logits = model(x)[0]  # (L, V)
    return F.cross_entropy(logits[:-1].double(), x[0, 1:], reduction="none")  # (L - 1,)


def test_held_out_text_is_what_train_validates_on(tok512, held_out, tmp_path):
    """The tokens `train`'s data preparation writes into its validation shards, in order."""
    from llama2_et.data import default_stories, open_shard, prepare_data

    prepared = prepare_data(default_stories(), tmp_path, tokenizer_model=tok512.path)
    assert held_out == open_shard(prepared.val_shards[0])[:N_TOKENS].tolist()
    assert len(held_out_stories()) == prepared.val_stories


def test_perplexity_is_the_cross_entropy_of_full_forward_passes(stories260k, held_out):
    """Windows of 64 positions overlapping by one: the loop's number equals cross_entropy per window."""
    model = with_context(stories260k, 64)
    nll = torch.cat([full_forward_nll(model, held_out[s : s + 64]) for s in range(0, N_TOKENS - 1, 63)])
    assert len(nll) == N_TOKENS - 1  # every token but the first predicted once
    expected = math.exp(nll.mean().item())
    assert perplexity(EagerDecoder(model), held_out) == pytest.approx(expected, rel=1e-6)


def test_stories260k_is_far_below_the_uniform_bound(stories260k, held_out):
    """A model of all-zero logits scores exactly the vocabulary size; stories260K scores < 1/20 of it."""
    blank = with_context(stories260k, 128)
    torch.nn.init.zeros_(blank.output.weight)  # logits 0 everywhere: a uniform guess
    vocab = stories260k.args.vocab_size
    assert perplexity(EagerDecoder(blank), held_out[:40]) == pytest.approx(vocab, rel=1e-9)
    assert perplexity(EagerDecoder(with_context(stories260k, 128)), held_out) < vocab / 20


@pytest.mark.slow
def test_fp32_program_gives_eager_perplexity(stories260k_pte, pte_context, stories260k, held_out):
    from llama2_et.runtime import PteDecoder

    eager = perplexity(EagerDecoder(with_context(stories260k, pte_context)), held_out)
    program = perplexity(PteDecoder(stories260k_pte("gather", "xnnpack")), held_out)
    assert program == pytest.approx(eager, rel=1e-4)


def test_bad_inputs_are_clear_errors(stories260k, tok512):
    decoder = EagerDecoder(with_context(stories260k, 32))
    for tokens in ([], [1]):
        with pytest.raises(ValueError, match=f"at least 2 tokens .*got {len(tokens)}"):
            perplexity(decoder, tokens)
    with pytest.raises(ValueError, match=r"token ids \[512\] are outside the vocabulary 0..511"):
        perplexity(decoder, [1, 512])
    with pytest.raises(ValueError, match="a context of 1 token"):
        perplexity(EagerDecoder(with_context(stories260k, 1)), [1, 2, 3])
    with pytest.raises(ValueError, match="n_tokens must be >= 2"):
        held_out_tokens(tok512, 1)
    with pytest.raises(ValueError, match="fewer than the 100,000,000 asked for"):
        held_out_tokens(tok512, 100_000_000)


def test_cli_prints_the_perplexity(data_dir, stories260k, tok512, capsys):
    args = ["perplexity", "--checkpoint", str(data_dir / "stories260K.bin"), "--tokenizer", str(tok512.path)]
    assert main([*args, "--tokens", "80"]) == 0
    expected = perplexity(EagerDecoder(stories260k), held_out_tokens(tok512, 80))
    assert f"perplexity {expected:.4f} of " in capsys.readouterr().out
    assert main([*args, "--tokens", "1"]) == 1
    assert "n_tokens must be >= 2" in capsys.readouterr().err
    assert main([*args[:3], "--tokenizer", "llama2", "--tokens", "8"]) == 1
    assert "has 32000 tokens but the model has 512" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["perplexity", "--tokenizer", str(tok512.path)])
    assert exit_.value.code == 2
    assert "one of the arguments --checkpoint --pte is required" in capsys.readouterr().err
