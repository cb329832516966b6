"""The command line: python -m llama2_et <command> ... (see --help of each command)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import assets
from .checkpoint import CheckpointError, load_checkpoint
from .config import kv_cache_bytes, param_count
from .files import check_output_path
from .generate import EagerDecoder, Sampler, generate_text
from .tokenizer import Tokenizer
from .train import SEED_RANGE, add_config_arguments, config_from_arguments, train


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `error: ...`, then exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An int >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def widths(text: str) -> tuple[int, ...]:
    """Comma-separated positive ints, e.g. 256,512,768 (argparse type)."""
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 256,512,768, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """An int >= 0 (argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed: an int in 0..2**64-1, what torch.Generator.manual_seed accepts (argparse type)."""
    value = int(text)
    if value not in SEED_RANGE:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**64-1, got {value}")
    return value


def temperature(text: str) -> float:
    """A finite float >= 0; 0 = greedy (argparse type)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = greedy), got {text}")
    return value


def probability_mass(text: str) -> float:
    """A float in (0, 1] (argparse type)."""
    value = float(text)
    if not 0 < value <= 1:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def utf8_text(text: str) -> str:
    """Command-line text that is valid UTF-8 (argparse type; Python keeps invalid bytes as surrogates)."""
    raw = os.fsencode(text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); pass UTF-8 text"
        ) from None
    return text


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokenizer", required=True, help="sentencepiece .model path or a name (stories260K, llama2)"
    )
    p.add_argument("--prompt", required=True, type=utf8_text)
    p.add_argument("--max-new-tokens", type=non_negative_int, default=256)
    p.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=probability_mass, default=None)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--seed", type=seed, default=None, help="0..2**64-1 (default: a random seed)")


def check_same_vocab(tokenizer: Tokenizer, decoder) -> None:
    """Raise a ValueError when the tokenizer's vocabulary is not the model's."""
    if tokenizer.vocab_size != decoder.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model has "
            f"{decoder.vocab_size}; use the tokenizer the model was trained with"
        )


def stream(decoder, args: argparse.Namespace) -> None:
    """Generate with the sampling args and stream the text (prompt included) to stdout."""
    tokenizer = Tokenizer(assets.resolve_tokenizer(args.tokenizer, "model"))
    check_same_vocab(tokenizer, decoder)
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.seed)
    for piece in generate_text(decoder, tokenizer, args.prompt, args.max_new_tokens, sampler):
        print(piece, end="", flush=True)
    print()


def cmd_generate(args: argparse.Namespace) -> None:
    model = load_checkpoint(assets.resolve_checkpoint(args.checkpoint))
    stream(EagerDecoder(model), args)


def cmd_info(args: argparse.Namespace) -> None:
    a = load_checkpoint(assets.resolve_checkpoint(args.checkpoint)).args
    for key, value in a.to_dict().items():
        print(f"{key:>20}: {value}")
    print(f"{'head_dim':>20}: {a.head_dim}")
    print(f"{'ffn_hidden_dim':>20}: {a.ffn_hidden_dim}")
    print(f"{'parameters':>20}: {param_count(a):,}")
    print(f"{'weights (fp32)':>20}: {param_count(a) * 4 / 2**20:.2f} MiB")
    print(f"{'kv cache (fp32)':>20}: {kv_cache_bytes(a) / 2**20:.2f} MiB")


def cmd_train(args: argparse.Namespace) -> None:
    result = train(config_from_arguments(args))
    if result is None:  # not rank 0 of a torchrun job
        return
    model = load_checkpoint(result.llama2c_bin)  # the exported .bin, read back by the core loader
    tokenizer = Tokenizer(result.data.tokenizer_model)
    room = model.args.max_seq_len - len(tokenizer.encode(args.prompt))
    text = "".join(generate_text(EagerDecoder(model), tokenizer, args.prompt, room, Sampler(0.0)))
    print(f"greedy sample from {result.llama2c_bin}:\n{text}")


def cmd_build_runner(args: argparse.Namespace) -> None:
    from .cpp import build_runner

    print(build_runner(args.build_dir, force=args.force))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import LONG_CONTEXT_CASE, MODELS, run_bench

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


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_pte

    check_output_path(args.out, ".pte")  # before the minutes an export takes
    model = load_checkpoint(assets.resolve_checkpoint(args.checkpoint))
    report = export_pte(
        model,
        args.out,
        design=args.design,
        backend=args.backend,
        quantize_scheme=args.quantize,
        max_seq_len=args.max_seq_len,
        group_size=args.group_size,
        quantize_embedding=args.quantize_embedding,
        embedding_group_size=args.embedding_group_size,
        buckets=args.buckets,
    )
    print(report.summary())


def cmd_perplexity(args: argparse.Namespace) -> None:
    from .quality import held_out_tokens, perplexity

    if args.pte:
        from .runtime import PteDecoder

        decoder, source = PteDecoder(args.pte), args.pte
    else:
        decoder, source = (
            EagerDecoder(load_checkpoint(assets.resolve_checkpoint(args.checkpoint))),
            args.checkpoint,
        )
    tokenizer = Tokenizer(assets.resolve_tokenizer(args.tokenizer, "model"))
    check_same_vocab(tokenizer, decoder)
    value = perplexity(decoder, held_out_tokens(tokenizer, args.tokens))
    print(
        f"perplexity {value:.4f} of {source} on {args.tokens:,} held-out tokens "
        f"(context {decoder.max_seq_len}, vocabulary {decoder.vocab_size})"
    )


def cmd_run(args: argparse.Namespace) -> None:
    from .runtime import PteDecoder

    stream(PteDecoder(args.pte), args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m llama2_et", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    # --- generate ---
    p = sub.add_parser("generate", help="generate text with the eager PyTorch model")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or preset name (stories260K)")
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    # --- info ---
    p = sub.add_parser("info", help="hyper-parameters, parameter count and KV-cache memory")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or preset name")
    p.set_defaults(func=cmd_info)

    # --- train ---
    p = sub.add_parser(
        "train",
        help="train on TinyStories (tokenizer, shards, AdamW; resumable; torchrun for DDP)",
        description="Defaults are the tiny preset: minutes on 2 CPU cores. Data: the local sample where "
        "LLAMA2_ET_DATA holds it, else TinyStories-valid.txt (~19 MB, downloaded once into the cache).",
    )
    add_config_arguments(p)
    p.add_argument(
        "--prompt", default="Once upon a time", type=utf8_text, help="greedy sample printed at the end"
    )
    p.set_defaults(func=cmd_train)

    # --- build-runner ---
    p = sub.add_parser(
        "build-runner",
        help="build the C++ runner (CMake, Release, against the ExecuTorch wheel); prints its path",
    )
    p.add_argument("--build-dir", default=None, help="build folder (default: <cache>/runner)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch even if the build is fresh")
    p.set_defaults(func=cmd_build_runner)

    # --- bench ---
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
        "--rows", default=None, help="comma-separated subset of rows (default: all; see bench.ROWS)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prefill length (default 64)")
    p.add_argument("--new-tokens", type=int, default=None, help="greedy tokens generated (default 128)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per process after a warm-up (default 3)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating runs of our .pte vs export_llm's, one process (default 10)",
    )
    p.add_argument(
        "--work-dir", default=None, help="keep the exported programs here, reusing those already there"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads for PyTorch and ExecuTorch (default: as is)"
    )
    p.set_defaults(func=cmd_bench)

    # --- export ---
    from .backends import BACKENDS
    from .designs import DEFAULT_DESIGN, DESIGNS
    from .quantize import EMBEDDING_BITS, QUANTIZATIONS

    p = sub.add_parser("export", help="export a checkpoint to an ExecuTorch .pte (XNNPACK or portable)")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or preset name (stories260K)")
    p.add_argument("--out", required=True, help="the .pte file to write")
    p.add_argument("--backend", choices=BACKENDS, default="xnnpack")
    p.add_argument(
        "--quantize", choices=QUANTIZATIONS, default="none", help="8da = 8-bit dynamic activations"
    )
    p.add_argument(
        "--max-seq-len", type=positive_int, default=None, help="context of the program (default: the model's)"
    )
    p.add_argument(
        "--design",
        choices=DESIGNS,
        default=DEFAULT_DESIGN,
        help="gather (default) and narrow: inputs (tokens, input_pos), run in TextLLMRunner too; "
        "preproc: (tokens, cos, sin, mask, input_pos)",
    )
    p.add_argument("--group-size", type=positive_int, default=32, help="8da4w: inputs per int4 weight group")
    p.add_argument(
        "--quantize-embedding",
        type=int,
        choices=EMBEDDING_BITS,
        default=None,
        help="store the token table in 4 or 8 bits per weight (weight-only; default: fp32)",
    )
    p.add_argument(
        "--embedding-group-size",
        type=positive_int,
        default=None,
        help="--quantize-embedding: table values per scale, a divisor of dim (default: one scale per row)",
    )
    p.add_argument(
        "--buckets",
        type=widths,
        default=(),
        help="gather design: widths W < max-seq-len of extra methods forward_<W> that attend the first W "
        "cache positions only, e.g. 256,512,768; the runtimes call the narrowest covering each step",
    )
    p.set_defaults(func=cmd_export)

    # --- perplexity ---
    p = sub.add_parser(
        "perplexity",
        help="perplexity of a checkpoint (eager) or a .pte on held-out TinyStories text",
        description="The held-out text is the validation split `train` makes of its stories (the local "
        "sample where LLAMA2_ET_DATA holds it). Text longer than the context is cut into windows.",
    )
    model_source = p.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--checkpoint", help="checkpoint path or preset name (eager PyTorch)")
    model_source.add_argument("--pte", help="a .pte (Python ExecuTorch runtime)")
    p.add_argument(
        "--tokenizer", required=True, help="sentencepiece .model path or a name (stories260K, llama2)"
    )
    p.add_argument("--tokens", type=positive_int, default=2048, help="held-out tokens scored (default 2048)")
    p.set_defaults(func=cmd_perplexity)

    # --- run ---
    p = sub.add_parser("run", help="generate text with an exported .pte (Python ExecuTorch runtime)")
    p.add_argument("--pte", required=True, help="a .pte written by `export`")
    add_sampling_args(p)
    p.set_defaults(func=cmd_run)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, CheckpointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # ours carry a message; the system's a file name and a reason
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        print(f"error: {reason}; check the path and its permissions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
