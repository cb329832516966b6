"""The scaling sweep: the bench's rows over model shapes and contexts, against the read roof.

Each case is a preset's shape (random weights) at one context, prompted to half of it: the prompt
leaves the cache half full halfway through decoding. Every case is benched as run_bench benches a
model (worker processes, alternating pairs, roofline), in its own work folder, so the programs of a
(shape, context) stay there, one file per quantization, and a rerun skips the exports it finds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config import preset
from ..display import table
from . import Case, run_cases, write_result
from .models import shaped_model
from .rows import EXPORT_LLM, OPTIONAL_ROWS, ROWS

SWEEP_MODELS = ("stories15M", "stories42M", "stories110M")  # llama2.c's shapes
SWEEP_CONTEXTS = (256, 1024, 2048)
SWEEP_ROWS = ("runner-ours", EXPORT_LLM, "cpp", "runner-ours-8da4w", f"{EXPORT_LLM}-8da4w", "cpp-8da4w")
SWEEP_NEW_TOKENS = 64
ROOF_TARGET = 0.85  # the fraction of the read roof our C++ runner's fp32 rows are held against


def sweep_prompt_tokens(context: int, new_tokens: int) -> int:
    """The longest prompt (BOS included) that leaves the cache half full halfway through decoding."""
    prompt_tokens = context // 2 - new_tokens // 2
    if prompt_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens} leaves no prompt in half of a {context}-position context")
    return prompt_tokens


def case_name(shape: str, context: int) -> str:
    """A case's name, also its work folder: the shape and the context."""
    return f"{shape}-ctx{context}"


def sweep_cases(models: list[str], contexts: list[int], new_tokens: int) -> list[Case]:
    """One case per (shape, context), smallest first, so that the first results come soon."""
    return [
        Case(
            case_name(shape, context),
            partial(
                shaped_model,
                case_name(shape, context),
                shape,
                context,
                sweep_prompt_tokens(context, new_tokens),
            ),
            new_tokens,
        )
        for shape in models
        for context in contexts
    ]


def run_sweep(
    models: list[str] = SWEEP_MODELS,
    contexts: list[int] = SWEEP_CONTEXTS,
    out: str | Path | None = None,
    rows: list[str] | None = None,
    new_tokens: int = SWEEP_NEW_TOKENS,
    repeats: int = 2,
    rounds: int = 5,
    work_dir: str | Path | None = None,
    threads: int | None = None,
    bandwidth_buffer: int = 2**30,
    show: Callable[[str], None] = print,
) -> dict:
    """Bench every (shape, context) with SWEEP_ROWS (or `rows`), print the sweep's table, write JSON to `out`.

    `work_dir` (default: <cache>/bench-sweep) keeps each case's programs; those already there are reused.
    """
    from ..assets import cache_dir

    for shape in models:
        preset(shape)  # an unknown name is refused before the bandwidth is measured
    cases = sweep_cases(models, contexts, new_tokens)
    work_dir = Path(work_dir) if work_dir is not None else cache_dir() / "bench-sweep"
    shapes = {case_name(shape, context): (shape, context) for shape in models for context in contexts}

    def add_points(result: dict) -> None:
        for name, case in result["models"].items():
            case["shape"], case["context"] = shapes[name]
        result["points"] = sweep_points(result)

    def save_so_far(result: dict) -> None:  # the cases measured so far, replaced after each case
        add_points(result)
        write_result(result, out, lambda _: None)

    result = run_cases(
        cases,
        rows or list(SWEEP_ROWS),
        repeats,
        rounds,
        work_dir,
        threads,
        bandwidth_buffer,
        show,
        save_so_far,
    )
    add_points(result)
    show(format_sweep(result["points"]))
    write_result(result, out, show)
    return result


def sweep_points(result: dict) -> list[dict]:
    """One flat record per (case, row): what it is, its speeds, bytes per token, roof, paired ratios."""
    by_key = {row.key: row for row in ROWS + OPTIONAL_ROWS}
    points = []
    for case in result["models"].values():
        for r in case["rows"]:
            row = by_key[r["key"]]
            pairs = {k: v for k, v in case["paired_ratios"].items() if k.startswith(f"{r['key']}/")}
            points.append(
                {
                    "model": case["shape"],
                    "context": case["context"],
                    "key": r["key"],
                    "program": "export_llm" if row.program.startswith(EXPORT_LLM) else "ours",
                    "runner": "C++ runner" if row.kind == "cpp" else "TextLLMRunner",
                    "weights": row.weights,
                    "prompt_tokens": case["prompt_tokens"],
                    "new_tokens": case["new_tokens"],
                    "prefill_tps": r["prefill_tps"],
                    "decode_tps": r["decode_tps"],
                    "bytes_per_token": r["bytes_per_token"],
                    "roof_fraction": r["roof_fraction"],
                    "paired_decode": {k: v["decode"]["median"] for k, v in pairs.items()},
                    "paired_prefill": {k: v["prefill"]["median"] for k, v in pairs.items()},
                }
            )
    return points


def format_sweep(points: list[dict]) -> str:
    """The sweep as one table, and how many of our C++ runner's fp32 rows reach ROOF_TARGET of the roof."""
    rows = [
        [
            p["model"],
            p["context"],
            p["key"],
            f"{p['prefill_tps']:.1f}",
            f"{p['decode_tps']:.1f}",
            f"{p['bytes_per_token'] / 2**20:.1f}",
            f"{p['roof_fraction']:.0%}",
            ", ".join(f"{k}: {v:.2f}x" for k, v in p["paired_decode"].items()) or None,
        ]
        for p in points
    ]
    header = [
        "model",
        "context",
        "row",
        "prefill tok/s",
        "decode tok/s",
        "MiB/token",
        "roof",
        "paired decode",
    ]
    lines = [repr(table(header, rows, "scaling sweep (speeds: medians; paired: medians of rounds)"))]
    cpp_fp32 = [p for p in points if p["runner"] == "C++ runner" and p["weights"] == "fp32"]
    if cpp_fp32:
        reached = [p for p in cpp_fp32 if p["roof_fraction"] >= ROOF_TARGET]
        lowest = min(cpp_fp32, key=lambda p: p["roof_fraction"])
        lines.append(
            f"our C++ runner at fp32: {len(reached)} of {len(cpp_fp32)} cases at >= {ROOF_TARGET:.0%} of the"
            f" read roof (lowest {lowest['roof_fraction']:.0%}: {lowest['model']}, context {lowest['context']})"
        )
    return "\n".join(lines)
