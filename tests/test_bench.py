"""The bench: its byte model of a decode step, its prompts, and one run of its eager rows end to end."""

import json
import statistics

import pytest

from llama2_et.bench.models import fixed_prompt
from llama2_et.bench.roofline import bytes_per_token, kv_positions_read
from llama2_et.config import kv_cache_bytes, param_count, preset


def test_fp32_decode_reads_every_parameter_and_the_whole_cache():
    args = preset("stories15M")  # tied: the embedding table is also the classifier, read whole
    expected = 4 * param_count(args) + 4 * args.dim + kv_cache_bytes(args)
    assert bytes_per_token(args, args.max_seq_len) == expected


def test_untied_embedding_table_is_read_one_row_at_a_time():
    args = preset("stories15M").replace(tie_embeddings=False)
    table = args.vocab_size * args.dim
    expected = 4 * (param_count(args) - table) + 4 * args.dim + kv_cache_bytes(args)
    assert bytes_per_token(args, args.max_seq_len) == expected


def test_filled_cache_and_quantized_weights():
    args = preset("stories260K")
    filled = kv_cache_bytes(args.replace(max_seq_len=100))
    assert bytes_per_token(args, 100) == 4 * param_count(args) + 4 * args.dim + filled
    # a program file of the fp32 weights counts what the fp32 formula counts: the file holds every
    # parameter, plus the tied table's second copy (the classifier's, inside the delegate), and a
    # decode step reads all of it but the embedding table (one row of it)
    table = 4 * args.vocab_size * args.dim
    fp32_file = 4 * param_count(args) + table
    assert bytes_per_token(args, 100, fp32_file) == bytes_per_token(args, 100)
    # a smaller (quantized) file: a byte less in the file is a byte less read per token
    assert bytes_per_token(args, 100, fp32_file) - bytes_per_token(args, 100, fp32_file // 4) == (
        fp32_file - fp32_file // 4
    )
    # an 8-bit token table: the file's table and the row read shrink by 4
    assert bytes_per_token(args, 100, fp32_file - table + table // 4, embedding_bits=8) == (
        bytes_per_token(args, 100) - 3 * args.dim
    )


def test_kv_positions_read_per_decode_step():
    assert kv_positions_read("all", 256, 64, 128) == 256
    assert kv_positions_read("none", 256, 64, 128) == 0
    # decode steps write positions 64..190, so they attend to 65..191 positions: 128 on average
    assert kv_positions_read("filled", 256, 64, 128) == sum(range(65, 192)) / 127
    with pytest.raises(ValueError, match="'some'"):
        kv_positions_read("some", 256, 64, 128)


def test_fixed_prompt_fits_and_repeats_the_story_for_long_prompts(tok512):
    for max_tokens in (16, 480):
        prompt, ids = fixed_prompt(tok512, max_tokens)
        assert max_tokens - 8 < len(ids) <= max_tokens
        assert tok512.encode(prompt, bos=True) == ids
    assert fixed_prompt(tok512, 480)[0].count("Once upon a time") >= 2
    with pytest.raises(ValueError, match="prompt_tokens=1"):
        fixed_prompt(tok512, 1)


@pytest.mark.slow  # a worker process per row
def test_bench_eager_rows(data_dir, tmp_path, capsys):
    """The measurement path: a worker process per row, RSS, bandwidth and roofline, the table, the JSON."""
    from llama2_et.bench import run_bench

    out = tmp_path / "bench.json"
    run_bench(
        ["stories260K"],
        out=out,
        rows=["eager-nocache", "eager"],
        prompt_tokens=16,
        new_tokens=4,
        repeats=1,
        bandwidth_buffer=64 * 2**20,
    )
    saved = json.loads(out.read_text())
    bandwidth = saved["read_bandwidth"]
    assert bandwidth["buffer_bytes"] == 64 * 2**20 and len(bandwidth["per_pass"]) == 5
    result = saved["models"]["stories260K"]
    assert result["prompt_tokens"] == 16
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {"eager-nocache", "eager"}
    args = preset("stories260K")
    for r in rows.values():
        assert r["greedy_match"] == 1.0  # a fresh process reloading save_meta's files gives eager's tokens
        assert r["generated_tokens"] == 4
        assert r["peak_rss_mib"] >= r["rss_increase_mib"] > 0
        # from the raw measurements: the median decode speed of the repeats, the median read pass
        assert r["roof_fraction"] == pytest.approx(
            statistics.median(r["decode_tps_all"])
            * r["bytes_per_token"]
            / statistics.median(bandwidth["per_pass"])
        )
    assert rows["eager"]["bytes_per_token"] == bytes_per_token(
        args, args.max_seq_len
    )  # the static cache, whole
    assert rows["eager-nocache"]["bytes_per_token"] == bytes_per_token(args, 0)
    printed = capsys.readouterr().out
    assert "eager PyTorch, KV cache" in printed and "read bandwidth" in printed
    assert not any(word in printed.lower() for word in ("peer", "goal"))
