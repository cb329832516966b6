"""From measurements to what the bench reports: table rows, ratios to export_llm's program, plain text."""

from __future__ import annotations

import os
import platform
import statistics

import torch

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
    for key in ("teacher_forced_agreement", "max_logit_error"):
        if key in run:
            out[key] = run[key]
    if program:
        out.update(file_bytes=program["bytes"], export_s=program["export_s"], program=program["path"])
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
    """Per round and median, our program's speed over export_llm's, from one alternating process."""
    paired = {}
    for phase in ("prefill", "decode"):
        ours, ref = pair["ours"][f"{phase}_tps"], pair["export_llm"][f"{phase}_tps"]
        ratios = [o / r for o, r in zip(ours, ref, strict=True)]
        paired[phase] = {"per_round": ratios, "median": statistics.median(ratios)}
    return paired


def format_paired(paired: dict) -> str:
    """The paired ratios in one line."""
    rounds = ", ".join(f"{r:.2f}" for r in paired["decode"]["per_round"])
    return (
        f"our gather-design .pte / export_llm's .pte, both in TextLLMRunner, alternating in one process: "
        f"decode {paired['decode']['median']:.2f}x, prefill {paired['prefill']['median']:.2f}x "
        f"(medians of {len(paired['decode']['per_round'])} rounds; decode per round: {rounds})"
    )


def format_table(name: str, model_result: dict) -> str:
    """A plain-text table of one model's rows, with ratios to export_llm's program and the roofline."""

    def fmt(value, spec: str, width: int) -> str:
        return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"

    head = (
        f"{'runtime':<48} {'file MiB':>8} {'prefill t/s':>11} {'x e_llm':>7} {'decode t/s':>10} {'x e_llm':>7}"
        f" {'RSS MiB':>7} {'+RSS':>5} {'greedy=eager':>12} {'max|dlogit|':>11} {'MiB/tok':>7} {'roof':>5}"
    )
    lines = [
        f"{name}: prompt {model_result['prompt_tokens']} tokens, {model_result['new_tokens']} new tokens "
        "(medians; x e_llm = ratio to export_llm's .pte in TextLLMRunner; RSS = process peak, +RSS = over the "
        "interpreter before loading; MiB/tok = weights and KV cache read per decoded token; roof = decode t/s "
        "x MiB/tok / read bandwidth)",
        head,
        "-" * len(head),
    ]
    for r in model_result["rows"]:
        size = r["file_bytes"] / 2**20 if "file_bytes" in r else None
        per_token = r["bytes_per_token"] / 2**20 if "bytes_per_token" in r else None
        match = r["greedy_match"]
        match_text = f"{match:.2f}" if isinstance(match, float) else ("yes" if match else "NO")
        if "teacher_forced_agreement" in r:
            match_text += f" ({r['teacher_forced_agreement']:.2f})"
        lines.append(
            f"{r['label']:<48} {fmt(size, '.2f', 8)} {r['prefill_tps']:11.1f}"
            f" {fmt(r.get('prefill_vs_export_llm'), '.2f', 7)} {r['decode_tps']:10.1f}"
            f" {fmt(r.get('decode_vs_export_llm'), '.2f', 7)} {r['peak_rss_mib']:7.0f} {r['rss_increase_mib']:5.0f}"
            f" {match_text:>12} {fmt(r.get('max_logit_error'), '.2e', 11)} {fmt(per_token, '.2f', 7)}"
            f" {fmt(r.get('roof_fraction'), '.0%', 5)}"
        )
    return "\n".join(lines)


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


def machine_info() -> dict:
    """Where the numbers come from."""
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "executorch": version("executorch"),
    }
