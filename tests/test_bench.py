"""The bench: its byte model of a decode step, its prompts, and one run of its eager rows end to end."""

import json
import statistics

import pytest

from llama2_et.bench import PAIR_PROCESSES
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


@pytest.mark.slow  # an export, the C++ runner three times
def test_bench_cpp_row_reads_the_bandwidth_before_each_run(data_dir, tmp_path):
    """The C++ runner's roof: each timed run against the bandwidth measured just before it, then the median."""
    from llama2_et.bench import run_bench

    saved = run_bench(
        ["stories260K"], rows=["cpp"], prompt_tokens=16, new_tokens=4, repeats=2, bandwidth_buffer=64 * 2**20
    )
    (row,) = saved["models"]["stories260K"]["rows"]
    per_run = row["read_bandwidth_per_run"]
    assert len(per_run) == len(row["decode_tps_all"]) == 2 and all(b > 1e8 for b in per_run)
    fractions = [tps * row["bytes_per_token"] / b for tps, b in zip(row["decode_tps_all"], per_run, strict=True)]
    assert row["roof_fraction"] == pytest.approx(statistics.median(fractions))
    assert row["greedy_match"] == 1.0


@pytest.mark.slow  # two exports and a worker process per row, twice
def test_sweep_tiny_case_measures_and_reuses_its_programs(data_dir, tmp_path, capsys):
    """One tiny shape at one short context, both fp32 TextLLMRunner rows: the JSON the figure reads."""
    from llama2_et.bench.sweep import run_sweep, sweep_prompt_tokens

    out, work = tmp_path / "sweep.json", tmp_path / "work"
    options = dict(rows=["runner-ours", "export-llm"], new_tokens=16, repeats=1, rounds=2, work_dir=work)
    run_sweep(["stories260K"], [128], out=out, bandwidth_buffer=64 * 2**20, **options)
    saved = json.loads(out.read_text())
    case = saved["models"]["stories260K-ctx128"]
    assert (case["shape"], case["context"], case["params"]["max_seq_len"]) == ("stories260K", 128, 128)
    assert sweep_prompt_tokens(128, 16) - 8 < case["prompt_tokens"] <= sweep_prompt_tokens(128, 16) == 56
    bandwidth = statistics.median(saved["read_bandwidth"]["per_pass"])
    llc = saved["read_bandwidth"]["last_level_cache_bytes"] or 0
    rows = {r["key"]: r for r in case["rows"]}
    points = {p["key"]: p for p in saved["points"]}
    assert set(points) == set(rows) == {"runner-ours", "export-llm"}
    args = preset("stories260K").replace(max_seq_len=128)
    kv = {"runner-ours": 128, "export-llm": case["prompt_tokens"] + 16 / 2}  # static cache; filled part
    for key, p in points.items():
        r = rows[key]
        assert (p["model"], p["context"], p["weights"], p["runner"]) == (
            "stories260K",
            128,
            "fp32",
            "TextLLMRunner",
        )
        assert p["decode_tps"] == statistics.median(r["decode_tps_all"]) > 0
        assert p["bytes_per_token"] == bytes_per_token(args, kv[key])  # from the program's shape
        assert p["roof_fraction"] == pytest.approx(p["decode_tps"] * p["bytes_per_token"] / bandwidth)
        # below the roof, unless the program fits in the last-level cache (as this tiny one does)
        assert 0 < p["roof_fraction"] < 1.5 or p["bytes_per_token"] < llc
        assert r["export_s"] > 0 and (work / "stories260K-ctx128" / r["program"]).is_file()
    ours, ref = rows["runner-ours"], rows["export-llm"]
    assert ours["decode_vs_export_llm"] == pytest.approx(ours["decode_tps"] / ref["decode_tps"])
    pair = case["paired_ratios"]["runner-ours/export-llm"]
    paired = pair["decode"]  # 2 rounds in each of the pair's processes
    assert pair["processes"] == PAIR_PROCESSES
    assert len(paired["per_round"]) == 2 * PAIR_PROCESSES and all(r > 0 for r in paired["per_round"])
    assert points["runner-ours"]["paired_decode"] == {"runner-ours/export-llm": paired["median"]}
    assert points["runner-ours"]["paired_decode"]["runner-ours/export-llm"] == statistics.median(
        paired["per_round"]
    )
    printed = capsys.readouterr().out
    assert "scaling sweep" in printed and "[1/1] stories260K-ctx128" in printed
    # a rerun finds the programs in the work folder and exports nothing
    again = run_sweep(["stories260K"], [128], bandwidth_buffer=64 * 2**20, show=lambda _: None, **options)
    assert all(r["export_s"] is None for r in again["models"]["stories260K-ctx128"]["rows"])


def test_sweep_saves_each_case_as_it_finishes(tmp_path, monkeypatch):
    """An interrupted sweep leaves a JSON with the cases measured so far, their points included."""
    from llama2_et.bench import sweep

    out = tmp_path / "sweep.json"
    out.write_text("an earlier sweep")
    row = {"key": "runner-ours", "prefill_tps": 10.0, "decode_tps": 5.0}
    row |= {"bytes_per_token": 2**20, "roof_fraction": 0.5}
    first_case = {"rows": [row], "paired_ratios": {}, "prompt_tokens": 96, "new_tokens": 64}

    def interrupted_after_one_case(cases, *args):
        case_done = args[-1]
        result = {"read_bandwidth": {}, "models": {cases[0].name: first_case}}
        case_done(result)
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_cases", interrupted_after_one_case)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(["stories15M"], [256, 1024], out=out, show=lambda _: None)
    saved = json.loads(out.read_text())
    assert list(saved["models"]) == ["stories15M-ctx256"]
    (point,) = saved["points"]
    assert (point["model"], point["context"], point["decode_tps"]) == ("stories15M", 256, 5.0)
    assert not list(tmp_path.glob(".*.tmp"))  # the replaced file left no temporary behind
