"""What a training run depends on: `TrainConfig` (its defaults the tiny preset) and its command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import get_type_hints

from .config import ModelArgs
from .data import default_stories

TINY = ModelArgs(
    dim=64,
    n_layers=4,
    n_heads=4,  # few heads: at dim 64 attention over 256 positions costs more than the matmuls
    n_kv_heads=2,
    vocab_size=512,
    multiple_of=4,
    max_seq_len=256,  # also the training window length
    # untied: with llama2.c's shared classifier, seed 1 sat ~80 steps on the unigram plateau (val 3.47
    # at step 500 vs 2.96 untied): each token's own embedding first votes for repeating that token
    tie_embeddings=False,
)
SEED_RANGE = range(2**64)  # what torch.manual_seed and numpy's generators accept


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the tiny preset (minutes on 2 CPU cores)."""

    # a stories file or folder, or a TinyStories file name (downloaded); see data.default_stories
    data: str = field(default_factory=default_stories)
    out_dir: str = "out/tiny"
    tokenizer: str | None = None  # a sentencepiece .model; None = train one on the train split
    model: ModelArgs = TINY  # the model trained; its max_seq_len is the window length
    val_fraction: float = 0.05
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    max_steps: int = 500
    learning_rate: float = 1e-2  # best of 5e-3, 1e-2, 2e-2 in 300-step trials
    min_lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping
    eval_interval: int = 100  # evaluate and checkpoint every this many steps
    eval_windows: int = 256  # held-out windows per evaluation, the same each time (the sample has 191)
    stop_at_step: int | None = None  # stop early with a checkpoint; --resume continues the same schedule
    resume: bool = False  # continue the checkpoint in out_dir
    overwrite: bool = False  # replace the model in out_dir instead of refusing
    seed: int = 1337
    device: str = "cpu"
    threads: int = 1  # torch CPU threads per process; 0 = PyTorch's default (see `train`)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, max_steps={self.max_steps})")
        if self.seed not in SEED_RANGE:
            raise ValueError(f"seed must be an integer in 0..2**64-1, got {self.seed}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = PyTorch's default), got {self.threads}")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume continues the checkpoint in out_dir and overwrite replaces it: choose one"
            )


def _add_flags(
    parser: argparse.ArgumentParser, cls: type, defaults: object, skip: tuple[str, ...] = ()
) -> None:
    """One --flag per field of a dataclass, defaulting to the field's value in defaults."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag, default, kind = "--" + f.name.replace("_", "-"), getattr(defaults, f.name), hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            base = next(t for t in (int, float, str) if t == kind or t in getattr(kind, "__args__", ()))
            parser.add_argument(flag, type=base, default=default, help=f"default: {default}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field and per ModelArgs field of its model, defaulting to the tiny preset."""
    _add_flags(parser, TrainConfig, TrainConfig(), skip=("model",))
    _add_flags(parser, ModelArgs, TINY)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed --flags (a ValueError names a bad one)."""
    model = ModelArgs(**{f.name: getattr(args, f.name) for f in fields(ModelArgs)})
    return TrainConfig(
        model=model, **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "model"}
    )
