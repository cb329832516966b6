"""The model against transformers' LlamaForCausalLM, and the KV cache against the full sequence."""

import pytest
import torch
import transformers

from llama2_et.checkpoint.hf import from_hf_state_dict, to_hf
from llama2_et.config import ModelArgs, param_count
from llama2_et.model import Transformer
from llama2_et.windows import TableWindows

GQA = ModelArgs(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=97, hidden_dim=96, max_seq_len=32)


def hf_llama(args: ModelArgs, seed: int = 0):
    """A transformers LlamaForCausalLM with random weights (not ours: its own init)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=args.dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab_size,
        intermediate_size=args.ffn_hidden_dim,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise them so they are tested too
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf


def test_logits_equal_transformers_llama_with_gqa():
    args = GQA.replace(tie_embeddings=False)
    hf = hf_llama(args)
    model = Transformer(args)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), args))
    tokens = torch.randint(0, args.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape == (2, 17, args.vocab_size)
    assert (ours - theirs).abs().max() <= 1e-4


def test_to_hf_round_trip_gives_transformers_the_same_logits(stories260k):
    state, config = to_hf(stories260k)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config, attn_implementation="eager")).eval()
    hf.load_state_dict(state, strict=False)
    tokens = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = stories260k(tokens)
        theirs = hf(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4


def test_cached_prefill_and_decode_equal_uncached_logits():
    torch.manual_seed(0)
    model = Transformer(GQA).eval()
    tokens = torch.randint(0, GQA.vocab_size, (1, 20))
    with torch.no_grad():
        full = model(tokens)  # (1, 20, V)
        model.setup_kv_cache()
        steps = [model(tokens[:, :12], torch.tensor([0]))]  # prefill 12: logits after token 11, (1, V)
        steps += [model(tokens[:, i : i + 1], torch.tensor([i])) for i in range(12, 20)]  # decode 8
    cached = torch.stack(steps, dim=1)  # (1, 9, V): after tokens 11..19
    assert (cached - full[:, 11:]).abs().max() <= 1e-4


def test_explicit_tables_equal_the_model_own():
    """hidden() fed TableWindows' slices (the preproc design's caller) equals forward's own tables."""
    torch.manual_seed(0)
    model = Transformer(GQA).eval()
    tokens = torch.randint(0, GQA.vocab_size, (1, 20))
    with torch.no_grad():
        explicit = model.output(model.hidden(tokens, *TableWindows.for_model(GQA).full(20)))
        assert torch.equal(explicit, model(tokens))


def test_cached_forward_without_a_cache_is_refused():
    with pytest.raises(ValueError, match="setup_kv_cache"):
        Transformer(GQA)(torch.tensor([[1, 2]]), torch.tensor([0]))


def test_param_count_matches_module():
    for args in (GQA, GQA.replace(tie_embeddings=False)):
        model = Transformer(args)
        unique = {id(p): p.numel() for p in model.parameters()}
        assert param_count(args) == sum(unique.values())


def test_window_outside_context_is_refused():
    pre = TableWindows.for_model(GQA)
    with pytest.raises(ValueError, match="max_seq_len"):
        pre.window(30, 3)
