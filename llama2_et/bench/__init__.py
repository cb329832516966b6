"""Measured comparisons: speed, memory and file size of every runtime, next to ExecuTorch's own LLM export.

For each model (a stories15M-shaped model with random weights, and the real stories260K) the bench
exports our programs and the one ExecuTorch's own LLM export (export_llm) makes, run by
ExecuTorch's TextLLMRunner, then measures each runtime in its own process (workers.py), so that
peak RSS belongs to that runtime alone. Every row also says whether its greedy tokens equal fp32
eager's; every program row reports the largest logit error against fp32 eager, teacher-forced on
eager's tokens, and every row but eager-nocache its perplexity on held-out TinyStories text, so what
quantization costs is shown next to what it buys (for trained weights: random ones have no
meaningful perplexity). The machine's read bandwidth puts each decode
speed against the memory roofline (roofline.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..checkpoint.meta import save_meta
from ..config import ModelArgs
from ..files import atomic_write_text
from ..generate import check_fits
from .models import LONG_CONTEXT_MODEL, MODELS, BenchModel, build_model, eager_reference
from .profile import format_profile
from .report import (
    add_ratios,
    format_bandwidth,
    format_paired,
    format_table,
    machine_info,
    paired_ratios,
    summarize,
)
from .roofline import add_roofline
from .rows import EXPORT_LLM, OPTIONAL_ROWS, PAIRS, ROW_KEYS, ROWS, Row, export_programs

__all__ = [
    "LONG_CONTEXT_CASE",
    "MODELS",
    "ROWS",
    "format_paired",
    "format_profile",
    "format_table",
    "run_bench",
]

HELD_OUT_TOKENS = 256  # of held-out TinyStories text, each program's perplexity is measured on

# The long-context case: a 1024-position cache, most of it filled, our program and export_llm's.
LONG_CONTEXT_CASE = {
    "models": [LONG_CONTEXT_MODEL],
    "rows": ["runner-ours", EXPORT_LLM],
    "prompt_tokens": 480,
    "new_tokens": 300,
}


def measure(spec: dict, work: Path) -> dict:
    """Run one measurement in a fresh Python process (workers.py) and return its result."""
    spec_path = work / f"spec_{spec['row']}.json"
    result_path = work / f"result_{spec['row']}.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "llama2_et.bench.workers", str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"measuring {spec['row']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


def measure_bandwidth(work: Path, threads: int, buffer_bytes: int) -> dict:
    """The machine's read bandwidth (roofline.py), measured in a worker with the bench's threads."""
    spec = {
        "row": "bandwidth",
        "kind": "bandwidth",
        "threads": threads,
        "buffer_bytes": buffer_bytes,
        "passes": 5,
    }
    return measure(spec, work)


def worker_spec(
    bm: BenchModel,
    work: Path,
    rows: list[Row],
    new_tokens: int,
    repeats: int,
    threads: int,
    bandwidth_buffer: int,
) -> dict:
    """What every worker of a model reads: eager's greedy reference, the checkpoint, tokenizers, the C++ runner."""
    ref_path = work / "reference.pt"
    torch.save(eager_reference(bm.model, bm.prompt_ids, new_tokens), ref_path)
    meta_dir = save_meta(bm.model, work / "meta")
    cpp_binary = tokenizer_bin = None
    if any(r.kind == "cpp" for r in rows):
        from ..cpp import build_runner
        from ..tokenizer import export_llama2c

        cpp_binary = str(build_runner())
        tokenizer_bin = str(export_llama2c(bm.tokenizer.path, work / "tokenizer.bin"))
    from ..quality import held_out_tokens

    return {
        "held_out_ids": held_out_tokens(bm.tokenizer, HELD_OUT_TOKENS) if bm.trained else None,
        "checkpoint": str(meta_dir),
        "tokenizer": str(bm.tokenizer.path),
        "tokenizer_bin": tokenizer_bin,
        "cpp_binary": cpp_binary,
        "prompt": bm.prompt,
        "prompt_ids": bm.prompt_ids,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "reference": str(ref_path),
        "threads": threads,
        "bandwidth_buffer": bandwidth_buffer,  # a C++ row reads it before each run (measure_cpp)
    }


# A pair alternates its two programs in one process, so a change in the machine's load hits both; it
# runs in this many processes one after another, because a process's own placement (where its memory
# and threads land) moves one program's speed against the other's: one pair of the stories15M shape
# measured 0.76x, 0.89x, 0.98x and 1.38x in four processes.
PAIR_PROCESSES = 3


def measure_pairs(
    base: dict, work: Path, rows: list[Row], programs: dict, rounds: int, progress: Callable, name: str
) -> tuple[dict, dict]:
    """Each pair alternating for `rounds` rounds in each of PAIR_PROCESSES processes, and each TextLLMRunner
    program's decode profile: (ratios by "ours/reference", over every round; profiles by row label)."""
    by_key = {row.key: row for row in rows}
    paired, profiles = {}, {}
    for ours, reference in PAIRS:
        if ours not in by_key or reference not in by_key:
            continue
        sides = [
            {"key": key, "kind": by_key[key].kind, "program": programs[by_key[key].program]["path"]}
            for key in (ours, reference)
        ]
        runs = []
        desc = f"{name}: {ours} vs {reference}, {rounds} rounds x {PAIR_PROCESSES} processes"
        for process in progress(range(PAIR_PROCESSES), desc=desc, unit="process"):
            row = f"pair_{ours}_vs_{reference}_{process}"
            runs.append(measure({**base, "row": row, "kind": "pair", "rounds": rounds, "sides": sides}, work))
        joined = {
            side: {phase: [tps for run in runs for tps in run[side][phase]] for phase in runs[0][side]}
            for side in ("ours", "reference")
        }
        paired[f"{ours}/{reference}"] = {**paired_ratios(joined), "processes": PAIR_PROCESSES}
        for side in sides:  # where a decode step's time goes, in each program (once)
            label = by_key[side["key"]].label
            if side["kind"] == "text-runner" and label not in profiles:
                spec = {
                    **base,
                    "row": f"profile_{side['key']}",
                    "kind": "profile",
                    "program": side["program"],
                }
                profiles[label] = measure(spec, work)
    return paired, profiles


def bench_model(
    bm: BenchModel,
    work: Path,
    rows: list[Row],
    new_tokens: int,
    repeats: int,
    rounds: int,
    progress: Callable,
    bandwidth: dict,
    threads: int,
    reuse: bool = False,
) -> dict:
    """Export, measure every row in its own process, then ours vs export_llm's alternating for `rounds` rounds.

    `bandwidth` is the run's read_bandwidth measurement: its buffer size is the one a C++ row reads again
    before each of its runs."""
    work.mkdir(parents=True, exist_ok=True)
    base = worker_spec(bm, work, rows, new_tokens, repeats, threads, bandwidth["buffer_bytes"])
    programs = export_programs(bm, work, {r.program for r in rows if r.program}, progress, reuse)
    results = []
    for row in progress(rows, desc=f"{bm.name}: measure", unit="row"):
        program = programs.get(row.program)
        spec = {**base, "row": row.key, "kind": row.kind, "program": program and program["path"]}
        results.append(summarize(row, measure(spec, work), program))
    paired, profiles = measure_pairs(base, work, rows, programs, rounds, progress, bm.name)
    return model_result(
        bm.model.args, len(bm.prompt_ids), new_tokens, rows, results, bandwidth["bytes_per_s"], paired, profiles
    )


def model_result(
    args: ModelArgs,
    prompt_tokens: int,
    new_tokens: int,
    rows: list[Row],
    results: list[dict],
    bandwidth: float,
    paired: dict,
    profiles: dict,
) -> dict:
    """A model's result from its rows' summaries, pairs and profiles; rows gain export_llm ratios and the roof."""
    add_ratios(results)
    add_roofline(results, rows, args, prompt_tokens, new_tokens, bandwidth)
    return {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "params": args.to_dict(),
        "rows": results,
        "paired_ratios": paired,
        "profile": profiles,
    }


def check_bench_args(rows: list[str] | None, repeats: int, rounds: int, new_tokens: int) -> None:
    """Raise a ValueError naming an unknown row or a count too small to measure."""
    unknown = set(rows or ()) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROW_KEYS)}")
    if repeats < 1 or rounds < 1 or new_tokens < 2:
        raise ValueError(
            f"need repeats >= 1, rounds >= 1 and new_tokens >= 2, got {repeats}, {rounds}, {new_tokens}"
        )


def show_model(name: str, model_result: dict, show: Callable[[str], None]) -> None:
    """A model's table, its decode profiles and its paired ratios."""
    show(format_table(name, model_result))
    if model_result["profile"]:
        show(format_profile(model_result["profile"]))
    for pair, ratios in model_result["paired_ratios"].items():
        show(format_paired(pair, ratios))


def run_bench(
    models: list[str],
    out: str | Path | None = None,
    rows: list[str] | None = None,
    prompt_tokens: int = 64,
    new_tokens: int = 128,
    repeats: int = 3,
    rounds: int = 10,
    work_dir: str | Path | None = None,
    threads: int | None = None,
    bandwidth_buffer: int = 2**30,
    show: Callable[[str], None] = print,
) -> dict:
    """Bench the named models side by side, print their tables and ratios, write JSON to `out`.

    With `work_dir` the exported programs are kept there, and programs already there are reused.
    `threads` sets PyTorch's and ExecuTorch's thread pools in the workers and the C++ runner's
    (default: PyTorch's as installed). `bandwidth_buffer` is the bytes summed to measure read bandwidth:
    far more than the last-level cache.
    """
    cases = [Case(name, partial(build_model, name, prompt_tokens), new_tokens) for name in models]
    result = run_cases(cases, rows, repeats, rounds, work_dir, threads, bandwidth_buffer, show)
    write_result(result, out, show)
    return result


def write_result(result: dict, out: str | Path | None, show: Callable[[str], None]) -> None:
    """The bench's JSON, written to `out` (replaced whole, never left half-written) unless it is None."""
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
        show(f"wrote {out}")


@dataclass(frozen=True)
class Case:
    """One model to bench: its name (and work folder), how to build it with its prompt, the tokens to generate."""

    name: str
    build: Callable[[], BenchModel]
    new_tokens: int


def run_cases(
    cases: list[Case],
    rows: list[str] | None,
    repeats: int,
    rounds: int,
    work_dir: str | Path | None,
    threads: int | None,
    bandwidth_buffer: int,
    show: Callable[[str], None],
    case_done: Callable[[dict], None] = lambda result: None,
) -> dict:
    """Measure the read bandwidth, then bench each case in turn (run_bench's arguments): the bench's result.

    `case_done` sees the result so far after each case (a long run saves it, so an interruption
    loses one case, not all of them).
    """
    from tqdm import tqdm

    for case in cases:
        check_bench_args(rows, repeats, rounds, case.new_tokens)
    selected = [r for r in ROWS + OPTIONAL_ROWS if r.key in rows] if rows else list(ROWS)
    threads = threads or torch.get_num_threads()
    result = {
        "machine": machine_info(),
        "threads": threads,
        "repeats": repeats,
        "rounds": rounds,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="llama2_et_bench_") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result["read_bandwidth"] = measure_bandwidth(work, threads, bandwidth_buffer)
        show(format_bandwidth(result["read_bandwidth"]))
        for i, case in enumerate(cases, 1):
            show(f"[{i}/{len(cases)}] {case.name}: building the model and its prompt")
            bm = case.build()
            check_fits(
                len(bm.prompt_ids), case.new_tokens, bm.model.args.max_seq_len, f"the context of {bm.name}"
            )
            model_result = bench_model(
                bm,
                work / case.name,
                selected,
                case.new_tokens,
                repeats,
                rounds,
                tqdm,
                result["read_bandwidth"],
                threads,
                work_dir is not None,
            )
            result["models"][case.name] = model_result
            show_model(case.name, model_result, show)
            case_done(result)
    return result
