"""The command line: python -m llama2_et <command> ... (see --help of each command)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import assets
from .bench.command import add_bench_args
from .checkpoint import CheckpointError, load_checkpoint
from .config import kv_cache_bytes, param_count
from .files import check_output_path
from .generate import EagerDecoder, Sampler, check_vocabulary, generate_text
from .tokenizer import Tokenizer
from .train import train
from .train_config import SEED_RANGE, add_config_arguments, config_from_arguments


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
    """The options of every command that samples text: tokenizer, prompt, sampler settings."""
    p.add_argument(
        "--tokenizer", required=True, help="sentencepiece .model path or a name (stories260K, llama2)"
    )
    p.add_argument("--prompt", required=True, type=utf8_text)
    p.add_argument("--max-new-tokens", type=non_negative_int, default=256)
    p.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=probability_mass, default=None)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--seed", type=seed, default=None, help="0..2**64-1 (default: a random seed)")


def stream(decoder, args: argparse.Namespace) -> None:
    """Generate with the sampling args and stream the text (prompt included) to stdout."""
    tokenizer = Tokenizer(assets.resolve_tokenizer(args.tokenizer, "model"))
    check_vocabulary(decoder.vocab_size, tokenizer=tokenizer)
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
    check_vocabulary(decoder.vocab_size, tokenizer=tokenizer)
    value = perplexity(decoder, held_out_tokens(tokenizer, args.tokens))
    print(
        f"perplexity {value:.4f} of {source} on {args.tokens:,} held-out tokens "
        f"(context {decoder.max_seq_len}, vocabulary {decoder.vocab_size})"
    )


def cmd_run(args: argparse.Namespace) -> None:
    from .runtime import PteDecoder

    stream(PteDecoder(args.pte), args)


def _add_generate_args(sub: argparse._SubParsersAction) -> None:
    """The `generate` command: a checkpoint and the sampling options."""
    p = sub.add_parser("generate", help="generate text with the eager PyTorch model")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or preset name (stories260K)")
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)


def _add_info_args(sub: argparse._SubParsersAction) -> None:
    """The `info` command: a checkpoint."""
    p = sub.add_parser("info", help="hyper-parameters, parameter count and KV-cache memory")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or preset name")
    p.set_defaults(func=cmd_info)


def _add_train_args(sub: argparse._SubParsersAction) -> None:
    """The `train` command: one flag per TrainConfig and ModelArgs field, and the sample's prompt."""
    p = sub.add_parser(
        "train",
        help="train on TinyStories (tokenizer, shards, AdamW; resumable; torchrun for DDP)",
        description="Defaults are the tiny preset: minutes on 2 CPU cores. Data: the 2,316-story TinyStories "
        "sample (read from LLAMA2_ET_DATA, or downloaded once into the cache), or --data.",
    )
    add_config_arguments(p)
    p.add_argument(
        "--prompt", default="Once upon a time", type=utf8_text, help="greedy sample printed at the end"
    )
    p.set_defaults(func=cmd_train)


def _add_build_runner_args(sub: argparse._SubParsersAction) -> None:
    """The `build-runner` command: the build folder and --force."""
    p = sub.add_parser(
        "build-runner",
        help="build the C++ runner (CMake, Release, against the ExecuTorch wheel); prints its path",
    )
    p.add_argument("--build-dir", default=None, help="build folder (default: <cache>/runner)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch even if the build is fresh")
    p.set_defaults(func=cmd_build_runner)


def _add_export_args(sub: argparse._SubParsersAction) -> None:
    """The `export` command: checkpoint, output, backend, design, quantization."""
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


def _add_perplexity_args(sub: argparse._SubParsersAction) -> None:
    """The `perplexity` command: a checkpoint or a .pte, a tokenizer, the held-out token count."""
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


def _add_run_args(sub: argparse._SubParsersAction) -> None:
    """The `run` command: a .pte and the sampling options."""
    p = sub.add_parser("run", help="generate text with an exported .pte (Python ExecuTorch runtime)")
    p.add_argument("--pte", required=True, help="a .pte written by `export`")
    add_sampling_args(p)
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: one subcommand per task, each calling its cmd_ function."""
    parser = Parser(prog="python -m llama2_et", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate_args(sub)
    _add_info_args(sub)
    _add_train_args(sub)
    _add_build_runner_args(sub)
    add_bench_args(sub)
    _add_export_args(sub)
    _add_perplexity_args(sub)
    _add_run_args(sub)
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
