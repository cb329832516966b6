"""From measurements to what the bench reports: table rows, ratios to export_llm's program, plain text."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from ..display import Table, table
from .rows import EXPORT_LLM, Row


def summarize(row: Row, run: dict, program: dict | None) -> dict:
    """One table row from a measurement process (medians over its repetitions) and the program it ran."""
    prefill, decode = run["prefill_tps"], run["decode_tps"]
    out = {
        "key": row.key,
        "label": row.label,
        "prefill_tps": statistics.median(prefill),
        "decode_tps": statistics.median(decode),
        "prefill_tps_all": prefill,
        "decode_tps_all": decode,
        "peak_rss_mib": run["peak_rss_mib"],
        "rss_increase_mib": run["rss_increase_mib"],
        "greedy_match": run["greedy_match"],
        "generated_tokens": run["generated_tokens"],
    }
    for key in ("teacher_forced_agreement", "max_logit_error", "perplexity", "read_bandwidth_per_run"):
        if key in run:
            out[key] = run[key]
    if program:
        out.update(
            file_bytes=program["bytes"], export_s=program["export_s"], program=Path(program["path"]).name
        )
        if "delegation" in program:
            out["delegation"] = program["delegation"]
    return out


def add_ratios(results: list[dict]) -> None:
    """Each row's prefill/decode speed, RSS increase and file size as a multiple of export_llm's program."""
    ref = next((r for r in results if r["key"] == EXPORT_LLM), None)
    if ref is None:
        return
    for r in results:
        r["prefill_vs_export_llm"] = r["prefill_tps"] / ref["prefill_tps"]
        r["decode_vs_export_llm"] = r["decode_tps"] / ref["decode_tps"]
        r["rss_increase_vs_export_llm"] = r["rss_increase_mib"] / ref["rss_increase_mib"]
        if "file_bytes" in r:
            r["file_vs_export_llm"] = r["file_bytes"] / ref["file_bytes"]


def paired_ratios(pair: dict) -> dict:
    """Per round and median, our row's speed over the reference row's, from alternating rounds."""
    paired = {}
    for phase in ("prefill", "decode"):
        ours, ref = pair["ours"][f"{phase}_tps"], pair["reference"][f"{phase}_tps"]
        ratios = [o / r for o, r in zip(ours, ref, strict=True)]
        paired[phase] = {"per_round": ratios, "median": statistics.median(ratios)}
    return paired


def format_paired(pair: str, paired: dict) -> str:
    """One pair's ratios in one line: `pair` is "ours-key/reference-key"."""
    rounds = ", ".join(f"{r:.2f}" for r in paired["decode"]["per_round"])
    processes = paired.get("processes", 1)  # files recorded before pairs ran in several processes: one
    where = "in one process" if processes == 1 else f"in each of {processes} processes"
    return (
        f"{pair}, alternating {where}: decode {paired['decode']['median']:.2f}x, prefill "
        f"{paired['prefill']['median']:.2f}x (medians of {len(paired['decode']['per_round'])} rounds; "
        f"decode per round: {rounds})"
    )


def _num(value: float | None, spec: str) -> str | None:
    return None if value is None else f"{value:{spec}}"


def speed_table(name: str, model_result: dict) -> Table:
    """One model's speeds: tok/s, ratios to export_llm's fp32 program, bytes read per token, the roof."""
    rows = [
        [
            r["label"],
            f"{r['prefill_tps']:.1f}",
            _num(r.get("prefill_vs_export_llm"), ".2f"),
            f"{r['decode_tps']:.1f}",
            _num(r.get("decode_vs_export_llm"), ".2f"),
            _num(r.get("bytes_per_token", 0) / 2**20 or None, ".1f"),
            _num(r.get("roof_fraction"), ".0%"),
        ]
        for r in model_result["rows"]
    ]
    header = ["runtime", "prefill tok/s", "x export_llm", "decode tok/s", "x export_llm", "MiB/token", "roof"]
    title = f"{name}: prompt {model_result['prompt_tokens']} tokens, {model_result['new_tokens']} new tokens"
    return table(header, rows, title + " (speeds: medians)")


def cost_table(name: str, model_result: dict) -> Table:
    """One model's costs and quality: file, export time, peak memory, agreement with fp32 eager, perplexity."""
    rows = []
    for r in model_result["rows"]:
        match = r["greedy_match"]
        agreement = f"{match:.2f}" if isinstance(match, float) else "yes" if match else "NO"
        if "teacher_forced_agreement" in r:
            agreement += f" ({r['teacher_forced_agreement']:.2f})"
        rows.append(
            [
                r["label"],
                _num(r.get("file_bytes", 0) / 2**20 or None, ".2f"),
                _num(r.get("export_s"), ".0f"),
                f"{r['peak_rss_mib']:.0f}",
                agreement,
                _num(r.get("max_logit_error"), ".1e"),
                _num(r.get("perplexity"), ".3f"),
            ]
        )
    header = [
        "runtime",
        "file MiB",
        "export s",
        "peak RSS MiB",
        "greedy = eager",
        "max |Δlogit|",
        "perplexity",
    ]
    return table(header, rows, f"{name}: size, memory and quality")


def format_table(name: str, model_result: dict) -> str:
    """Both tables of one model as plain text (what `python -m llama2_et bench` prints)."""
    return f"{speed_table(name, model_result)!r}\n\n{cost_table(name, model_result)!r}"


def format_bandwidth(bandwidth: dict) -> str:
    """The measured read bandwidth, and the cache size below which a roof above 100% is possible."""
    line = (
        f"read bandwidth: {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s (median of {len(bandwidth['per_pass'])} sums"
        f" of a {bandwidth['buffer_bytes'] / 2**20:,.0f} MiB buffer, {bandwidth['threads']} threads)"
    )
    if llc := bandwidth["last_level_cache_bytes"]:
        line += (
            f"; last-level cache {llc / 2**20:.0f} MiB: a program reading less per token can exceed the roof"
        )
    return line


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where the numbers come from."""
    from importlib.metadata import version

    return {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "executorch": version("executorch"),
    }
