"""The rows of the bench (one runtime each) and the programs they run, built for a model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..designs import DEFAULT_DESIGN
from .models import BenchModel

GATHER = DEFAULT_DESIGN  # our default design, which TextLLMRunner runs too: forward(tokens, input_pos)
EXPORT_LLM = "export-llm"  # the row and program of ExecuTorch's own LLM export


@dataclass(frozen=True)
class Row:
    """One runtime to measure: how it runs (kind), which program file it runs, what a decode step reads."""

    key: str
    label: str
    kind: str  # eager-nocache | eager | pte | text-runner | cpp
    program: str | None = None  # a key of the programs built for the model
    weights: str = "fp32"  # fp32 | 8da8w | 8da4w | 8da4w-e8 (and an 8-bit embedding table)
    kv_read: str = "all"  # per decode step: all max_seq_len cache positions, the filled ones, or none


ROWS = (
    Row("eager-nocache", "eager PyTorch, no cache", "eager-nocache", kv_read="none"),
    Row("eager", "eager PyTorch, KV cache", "eager"),
    # the preproc design, fed filled-prefix masks by PteDecoder, attends to the filled positions only
    Row("pte-portable", "our .pte portable (preproc, Python runtime)", "pte", "portable", kv_read="filled"),
    Row("pte-xnnpack", "our .pte XNNPACK fp32 (preproc, Python runtime)", "pte", "xnnpack", kv_read="filled"),
    Row("cpp", f"our C++ runner ({GATHER} .pte, XNNPACK fp32)", "cpp", GATHER),
    Row("runner-ours", f"TextLLMRunner (our {GATHER} .pte, XNNPACK fp32)", "text-runner", GATHER),
    Row(
        EXPORT_LLM,
        "TextLLMRunner (export_llm's .pte, XNNPACK fp32)",
        "text-runner",
        EXPORT_LLM,
        kv_read="filled",  # its custom SDPA attends to the filled prefix of the cache only
    ),
    Row(
        "runner-ours-8da8w",
        f"TextLLMRunner (our {GATHER} .pte, XNNPACK 8da8w)",
        "text-runner",
        f"{GATHER}-8da8w",
        "8da8w",
    ),
    Row(
        "runner-ours-8da4w",
        f"TextLLMRunner (our {GATHER} .pte, XNNPACK 8da4w)",
        "text-runner",
        f"{GATHER}-8da4w",
        "8da4w",
    ),
    Row(
        f"{EXPORT_LLM}-8da4w",
        "TextLLMRunner (export_llm's .pte, XNNPACK 8da4w)",
        "text-runner",
        f"{EXPORT_LLM}-8da4w",
        "8da4w",
        kv_read="filled",
    ),
    Row(
        "runner-ours-8da4w-e8",
        f"TextLLMRunner (our {GATHER} .pte, 8da4w, 8-bit embedding)",
        "text-runner",
        f"{GATHER}-8da4w-e8",
        "8da4w-e8",
    ),
)
# Rows measured only when named (--rows, the sweep): not in the default bench.
OPTIONAL_ROWS = (
    Row("cpp-8da4w", f"our C++ runner ({GATHER} .pte, XNNPACK 8da4w)", "cpp", f"{GATHER}-8da4w", "8da4w"),
    # backend xnnpack-filled: our filled_attention kernel reads the filled cache positions only
    Row(
        "runner-ours-filled",
        f"TextLLMRunner (our {GATHER} .pte, XNNPACK fp32, filled-cache attention)",
        "text-runner",
        f"{GATHER}-filled",
        kv_read="filled",
    ),
    Row(
        "runner-ours-filled-8da4w",
        f"TextLLMRunner (our {GATHER} .pte, XNNPACK 8da4w, filled-cache attention)",
        "text-runner",
        f"{GATHER}-filled-8da4w",
        "8da4w",
        kv_read="filled",
    ),
    Row(
        "cpp-filled",
        f"our C++ runner ({GATHER} .pte, XNNPACK fp32, filled-cache attention)",
        "cpp",
        f"{GATHER}-filled",
        kv_read="filled",
    ),
)
ROW_KEYS = tuple(r.key for r in ROWS + OPTIONAL_ROWS)
# Rows measured alternating (ours, reference), in several processes: load drifts cancel in each round's ratio.
PAIRS = (
    ("runner-ours", EXPORT_LLM),  # same runner, so only the programs differ
    ("runner-ours-8da4w", f"{EXPORT_LLM}-8da4w"),
    ("cpp", "runner-ours"),  # same program, so only the runners differ
    ("runner-ours-filled", EXPORT_LLM),
    ("runner-ours-filled-8da4w", f"{EXPORT_LLM}-8da4w"),
    ("runner-ours-filled", "runner-ours"),  # what the kernel buys over reading the whole cache
)


def export_programs(
    bm: BenchModel, work: Path, keys: set[str], progress: Callable, reuse: bool = False
) -> dict[str, dict]:
    """Export the programs the rows need: {key: {"path", "bytes", "export_s"}}; reuse existing files if asked."""
    from ..export_llm import export_with_export_llm

    def ours(**options) -> Callable[[Path], object]:
        def build(path: Path) -> object:
            from ..export import export_pte

            return export_pte(bm.model, path, **options)

        return build

    builders = {
        "portable": ours(design="preproc", backend="portable"),
        "xnnpack": ours(design="preproc", backend="xnnpack"),
        GATHER: ours(design=GATHER, backend="xnnpack"),
        f"{GATHER}-8da8w": ours(design=GATHER, backend="xnnpack", quantize_scheme="8da8w"),
        f"{GATHER}-8da4w": ours(design=GATHER, backend="xnnpack", quantize_scheme="8da4w"),
        f"{GATHER}-8da4w-e8": ours(
            design=GATHER, backend="xnnpack", quantize_scheme="8da4w", quantize_embedding=8
        ),
        f"{GATHER}-filled": ours(design=GATHER, backend="xnnpack-filled"),
        f"{GATHER}-filled-8da4w": ours(design=GATHER, backend="xnnpack-filled", quantize_scheme="8da4w"),
        EXPORT_LLM: lambda path: export_with_export_llm(bm.model, path),
        f"{EXPORT_LLM}-8da4w": lambda path: export_with_export_llm(
            bm.model, path, qmode="8da4w", group_size=32
        ),
    }
    programs = {}
    for key in progress([k for k in builders if k in keys], desc=f"{bm.name}: export", unit="pte"):
        path = work / f"{key}.pte"
        reused = reuse and path.is_file()
        start = time.perf_counter()
        report = None
        if not reused:  # written beside, then renamed: an interrupted export leaves no file to reuse
            partial = path.with_suffix(".partial.pte")
            report = builders[key](partial)
            partial.replace(path)
        export_s = None if reused else time.perf_counter() - start
        programs[key] = {"path": str(path), "bytes": path.stat().st_size, "export_s": export_s}
        if hasattr(report, "delegate_calls"):  # our export reports what it delegated
            programs[key]["delegation"] = {
                name: getattr(report, name)
                for name in ("delegate_calls", "delegated_nodes", "portable_nodes", "portable_ops")
            }
    return programs
