"""transforms.py and backends.py: every source transformation computes what the eager module computes.

Reference: the eager Transformer with its KV cache (itself checked against transformers' Llama in
test_model.py), run through prefill and decode to the last position of the cache.
Run time: about 2 s.
"""

import pytest
import torch

from llama2_et.backends import BACKENDS, backend
from llama2_et.config import ModelArgs
from llama2_et.export import prepare_for_export
from llama2_et.generate import EagerDecoder, Recorder, Sampler, generate
from llama2_et.model import RMSNorm, Transformer
from llama2_et.transforms import (
    LinearMeanRMSNorm,
    MatmulAttention,
    attention_as_matmuls,
    attention_over_filled_cache,
    rms_norm_as_linear,
)

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=97, max_seq_len=16)


def greedy_logits(model: Transformer, prompt: list[int]) -> list[torch.Tensor]:
    """Logits of a prefill and greedy decode steps up to the last cache position."""
    recorder = Recorder(EagerDecoder(model))
    list(generate(recorder, prompt, model.args.max_seq_len - len(prompt), Sampler(), stop_ids=()))
    return recorder.logits


def random_model(args: ModelArgs) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(args).eval()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, RMSNorm)):
            norm.weight.uniform_(0.5, 1.5)  # not all ones: the norm's weight must be carried over
    return model.setup_kv_cache()


def test_rms_norm_as_linear_equals_rms_norm():
    norm = RMSNorm(64, 1e-5)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(1, 7, 64) * 3
    torch.testing.assert_close(LinearMeanRMSNorm(norm)(x), norm(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("transform", [rms_norm_as_linear, attention_as_matmuls, attention_over_filled_cache])
@pytest.mark.parametrize("n_kv_heads", [4, 8])  # grouped-query and plain multi-head attention
def test_transformed_model_equals_eager_to_the_end_of_the_cache(transform, n_kv_heads):
    model = random_model(ARGS.replace(n_kv_heads=n_kv_heads))
    prompt = [1, 40, 7, 33, 90, 12, 5, 61, 8, 2]  # prefill 10, decode to position 15
    expected = greedy_logits(model, prompt)
    transformed = random_model(ARGS.replace(n_kv_heads=n_kv_heads))
    transform(transformed)
    got = greedy_logits(transformed, prompt)
    assert len(got) == len(expected) == ARGS.max_seq_len - len(prompt)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_attention_as_matmuls_swaps_every_layer_and_shares_the_weights():
    model = random_model(ARGS)
    wk = model.layers[1].attention.wk.weight
    attention_as_matmuls(model)
    assert all(isinstance(layer.attention, MatmulAttention) for layer in model.layers)
    assert model.layers[1].attention.wk.weight is wk


@pytest.mark.parametrize("name", list(BACKENDS))
def test_prepared_model_of_every_backend_equals_eager(name):
    model = random_model(ARGS)
    prompt = [1, 40, 7, 33]
    expected = greedy_logits(model, prompt)[:8]
    got = greedy_logits(prepare_for_export(model, name), prompt)[:8]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_backend_registry():
    assert backend("portable").transforms == ()  # portable runs the eager modules as they are
    assert backend("xnnpack").transforms == (rms_norm_as_linear, attention_as_matmuls)
    assert backend("xnnpack-filled").transforms == (rms_norm_as_linear, attention_over_filled_cache)
    assert all(t.__doc__.startswith("Why:") for b in BACKENDS.values() for t in b.transforms)
    with pytest.raises(
        ValueError, match="unknown backend 'vulkan'; choose one of xnnpack, xnnpack-filled, portable"
    ):
        backend("vulkan")
