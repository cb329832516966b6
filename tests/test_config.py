"""Presets carry the published llama2.c / Meta hyper-parameters."""

import pytest

from llama2_et.config import PRESETS, ModelArgs, kv_cache_bytes, param_count, preset


def test_derived_ffn_widths_match_the_published_checkpoints():
    # hidden_dim values in the headers of llama2.c's released .bin files and in Llama 2 7B
    widths = {
        "stories260K": 172,
        "stories15M": 768,
        "stories42M": 1376,
        "stories110M": 2048,
        "llama2-7B": 11008,
    }
    assert {name: preset(name).ffn_hidden_dim for name in widths} == widths


def test_llama2_7b_size():
    args = preset("llama2-7B")
    assert round(param_count(args) / 1e9, 2) == 6.74  # Meta's reported 6.7B (6,738,415,616)
    assert kv_cache_bytes(args, bytes_per_value=2) == 2 * 32 * 4096 * 4096 * 2  # 2 GiB in fp16


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="stories260K"):
        preset("stories1B")


def test_invalid_args_are_refused():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_heads"):
        ModelArgs(dim=60, n_heads=8)
    with pytest.raises(ValueError, match="n_heads must be positive, got 0"):  # not a ZeroDivisionError
        ModelArgs(n_heads=0)
    with pytest.raises(ValueError, match="n_heads must be positive, got -8"):
        ModelArgs(dim=64, n_heads=-8)
    with pytest.raises(
        ValueError, match=r"dim must be an integer, got '64' \(str\)"
    ):  # e.g. from a JSON file
        ModelArgs(dim="64")
    with pytest.raises(ValueError, match="rope_theta must be positive, got nan"):
        ModelArgs(rope_theta=float("nan"))
    with pytest.raises(ValueError, match="max_seq_len must be positive, got 0"):
        ModelArgs(max_seq_len=0)
    with pytest.raises(ValueError, match="tie_embeddings must be true or false"):
        ModelArgs(tie_embeddings="yes")
    assert set(PRESETS) >= {"stories260K", "stories15M", "stories42M", "stories110M", "llama2-7B"}
