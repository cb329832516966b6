"""The `bench` command: its arguments, the bench of named models, the scaling sweep."""

from __future__ import annotations

import argparse

from .rows import OPTIONAL_ROWS


def positive_ints(text: str) -> list[int]:
    """Comma-separated ints >= 1 (argparse type)."""
    items = text.split(",")
    if not all(item.isdigit() and int(item) > 0 for item in items):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return [int(item) for item in items]


def add_bench_args(sub: argparse._SubParsersAction) -> None:
    """The `bench` command: models, rows, token counts, repetitions, threads."""
    p = sub.add_parser(
        "bench", help="prefill/decode speed, RSS and size of every runtime vs ExecuTorch's export_llm"
    )
    p.add_argument("--quick", action="store_true", help="stories260K only, 32+32 tokens, fewer repetitions")
    p.add_argument(
        "--models", default=None, help="comma-separated: stories15M-shape,stories260K,stories15M-shape-1k"
    )
    p.add_argument(
        "--long-context",
        action="store_true",
        help="the stories15M shape with a 1024-position context: 480-token prompt, 300 new tokens, "
        "our .pte vs export_llm's",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="the scaling sweep: model shapes x contexts, half-full prompts, ours vs export_llm at fp32 "
        "and 8da4w, against the read roof (long: exports are kept in --work-dir, default <cache>/bench-sweep)",
    )
    p.add_argument(
        "--sweep-models",
        default=None,
        help="comma-separated presets for --sweep (default: stories15M,stories42M,stories110M)",
    )
    p.add_argument(
        "--sweep-contexts",
        type=positive_ints,
        default=None,
        help="comma-separated contexts for --sweep (default: 256,1024,2048)",
    )
    optional = ", ".join(row.key for row in OPTIONAL_ROWS)
    p.add_argument(
        "--rows", default=None, help=f"comma-separated rows (default: bench.ROWS; optional: {optional})"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prefill length (default 64)")
    p.add_argument(
        "--new-tokens", type=int, default=None, help="greedy tokens generated (default 128; --sweep: 64)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per process after a warm-up (default 3; --sweep: 2)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating runs of the two programs of a pair in each of its processes (default 10; --sweep: 5)",
    )
    p.add_argument(
        "--work-dir", default=None, help="keep the exported programs here, reusing those already there"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads for PyTorch and ExecuTorch (default: as is)"
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from . import LONG_CONTEXT_CASE, MODELS, run_bench

    if args.sweep:
        cmd_sweep(args)
        return
    quick = args.quick  # stories260K only, short runs: the book chapter's and the smoke test's setting
    models = args.models.split(",") if args.models else (["stories260K"] if quick else list(MODELS))
    case = LONG_CONTEXT_CASE if args.long_context else {}
    run_bench(
        case.get("models", models),
        out=args.out,
        rows=case.get("rows", args.rows.split(",") if args.rows else None),
        prompt_tokens=case.get("prompt_tokens", args.prompt_tokens or (32 if quick else 64)),
        new_tokens=case.get("new_tokens", args.new_tokens or (32 if quick else 128)),
        repeats=args.repeats or (2 if quick else 3),
        rounds=args.rounds or (3 if quick else 10),
        work_dir=args.work_dir,
        threads=args.threads,
    )


def cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import SWEEP_CONTEXTS, SWEEP_MODELS, SWEEP_NEW_TOKENS, run_sweep

    if args.quick or args.long_context or args.models or args.prompt_tokens:
        raise ValueError(
            "--sweep sets its own models and prompts: use --sweep-models and --sweep-contexts, "
            "not --quick, --long-context, --models or --prompt-tokens"
        )
    run_sweep(
        args.sweep_models.split(",") if args.sweep_models else list(SWEEP_MODELS),
        args.sweep_contexts or list(SWEEP_CONTEXTS),
        out=args.out,
        rows=args.rows.split(",") if args.rows else None,
        new_tokens=args.new_tokens or SWEEP_NEW_TOKENS,
        repeats=args.repeats or 2,  # fewer than the bench's 3 and 10: nine cases
        rounds=args.rounds or 5,
        work_dir=args.work_dir,
        threads=args.threads,
    )
