"""Train a LLaMA2 on TinyStories: AdamW, warmup + cosine decay, clipping, accumulation, resume, DDP.

One process: `python -m llama2_et train`. Several: `torchrun --nproc_per_node N -m llama2_et train`
(DistributedDataParallel, gloo on CPU, nccl on GPU). The model is the core `Transformer`, fed
by `Preproc.full(L)` as in every other full-sequence use.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint.llama2c import save_llama2c_bin
from .checkpoint.safe_load import CheckpointError, load_torch_file
from .config import ModelArgs, param_count
from .data import (
    PreparedData,
    TokenBatches,
    bigram_entropy,
    default_stories,
    open_shard,
    prepare_data,
    unigram_entropy,
)
from .files import atomic_write, check_output_dir
from .model import Transformer
from .preproc import Preproc
from .tokenizer import Tokenizer

CHECKPOINT_KEYS = ("model", "model_args", "optimizer", "iter_num", "config", "history", "rng_states")


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


@dataclass
class TrainResult:
    """What a run produced and measured (on rank 0)."""

    checkpoint: Path
    llama2c_bin: Path
    plot: Path
    data: PreparedData
    unigram_entropy: float  # nats/token of the validation tokens: the best loss without context
    bigram_entropy: float  # nats/token of the validation tokens given the previous one
    val_loss: float  # last evaluation, nats/token
    seconds: float
    history: dict = field(repr=False)


def init_weights(model: Transformer) -> None:
    """GPT-2 style init: N(0, 0.02), and 0.02/sqrt(2 n_layers) for the projections into the residual stream."""
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = (
                0.02 / math.sqrt(2 * model.args.n_layers)
                if name.endswith(("wo.weight", "w2.weight"))
                else 0.02
            )
            nn.init.normal_(p, mean=0.0, std=std)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of a step: linear warmup to learning_rate, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (
        cfg.learning_rate - cfg.min_lr
    )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, linear weights) and none on norm gains."""
    params = dict(model.named_parameters())  # a tied classifier appears once
    groups = [
        {"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    def from_main(self, obj: object) -> object:
        """Rank 0's obj, in every process."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over all processes."""
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value


def init_distributed(device: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return Distributed(0, 1, torch.device(device))
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return Distributed(dist.get_rank(), world_size, torch.device("cuda", local_rank))
    dist.init_process_group("gloo")
    return Distributed(dist.get_rank(), world_size, torch.device(device))


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: TokenBatches,
    step: int,
    cfg: TrainConfig,
    ctx: Distributed,
    rope_and_mask: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> float:
    """One optimizer step: the step's learning rate, gradients of cfg.grad_accum micro-batches, clipping,
    the AdamW update; returns the step's training loss (nats/token, the mean over processes)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    ddp = isinstance(net, nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=ctx.device)
    for micro in range(cfg.grad_accum):
        # global micro-batch index: N processes x accumulation see the batches of 1 process x N*accum
        x, y = batches.batch((step * cfg.grad_accum + micro) * ctx.world_size + ctx.rank)
        x, y = x.to(ctx.device), y.to(ctx.device)  # (B, L) each, y = x shifted by one token
        last = micro == cfg.grad_accum - 1
        with net.no_sync() if ddp and not last else nullcontext():  # all-reduce once per step
            logits = net(x, *rope_and_mask)  # (B, L, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over B * L predictions
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(ctx.mean(loss_sum / cfg.grad_accum))


@torch.no_grad()
def evaluate(
    model: Transformer, preproc: Preproc, x: torch.Tensor, y: torch.Tensor, batch_size: int, ctx: Distributed
) -> float:
    """Mean cross-entropy (nats/token) over windows x, y (N, L), split across processes."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses, tokens)
    rows = torch.arange(ctx.rank, len(x), ctx.world_size)
    for i in range(0, len(rows), batch_size):
        xb, yb = x[rows[i : i + batch_size]].to(ctx.device), y[rows[i : i + batch_size]].to(ctx.device)
        logits = model(xb, *preproc.full(xb.shape[1]))  # (B, L, V)
        total[0] += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").double()
        total[1] += yb.numel()
    model.train()
    if ctx.world_size > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def save_training_checkpoint(path: Path, state: dict) -> Path:
    """torch.save of tensors and plain containers only (loads with weights_only=True), written atomically."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train`, or a CheckpointError saying why it cannot be resumed from."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}; train without --resume first")
    state = load_torch_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a llama2_et training checkpoint: missing {missing}")
    return state


def restore(
    path: Path, model: Transformer, optimizer: torch.optim.Optimizer, ctx: Distributed
) -> tuple[int, dict]:
    """Load weights, optimizer state and this process's RNG state; returns the step and loss history."""
    state = load_training_checkpoint(path)
    if state["model_args"] != model.args.to_dict():
        saved, args = ModelArgs(**state["model_args"]), model.args
        detail = (
            f"vocab_size {saved.vocab_size} vs {args.vocab_size} (tokenizer/model mismatch)"
            if saved.vocab_size != args.vocab_size
            else f"{saved} vs {args}"
        )
        raise ValueError(f"{path} was trained with other model settings: {detail}")
    if len(state["rng_states"]) != ctx.world_size:
        raise ValueError(
            f"{path} was written by {len(state['rng_states'])} processes; "
            f"resume it with the same number (now {ctx.world_size})"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng_states"][ctx.rank]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    return state["iter_num"], state["history"]


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generator states (dropout draws from them)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def plot_losses(
    history: dict, path: str | Path, unigram: float | None = None, bigram: float | None = None
) -> Path:
    """A PNG of the train and validation loss curves, with the unigram and bigram entropies for reference."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(history["step"], history["train_loss"], lw=1, alpha=0.7, label="train (batch)")
    ax.plot(history["val_step"], history["val_loss"], "o-", label="validation (held-out stories)")
    if unigram is not None:
        ax.axhline(unigram, ls="--", c="gray", label=f"unigram entropy {unigram:.2f}")
    if bigram is not None:
        ax.axhline(bigram, ls=":", c="gray", label=f"bigram entropy {bigram:.2f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return Path(path)


def check_vocab(prepared: PreparedData, vocab_size: int) -> None:
    """The tokenizer and the shards must fit the model's vocabulary."""
    tokenizer = Tokenizer(prepared.tokenizer_model)
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but the model's vocab_size is "
            f"{vocab_size}; pass --vocab-size {tokenizer.vocab_size} or a tokenizer with {vocab_size} pieces"
        )
    for shard in prepared.train_shards + prepared.val_shards:
        top = int(open_shard(shard).max())
        if top >= vocab_size:
            raise ValueError(
                f"{shard} holds token id {top} >= vocab_size {vocab_size}: it was made with another "
                "tokenizer; delete the data folder to pretokenize again"
            )


def check_device(device: str) -> torch.device:
    """The torch.device of a --device string, or a ValueError if this PyTorch cannot use it."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device name; use cpu or cuda (cuda:N)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "built with CUDA but sees no GPU"
        raise ValueError(
            f"device {device!r}: this PyTorch ({torch.__version__}) is {build}; use --device cpu"
        )
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: training runs on cpu or cuda")
    return parsed


def check_out_dir(cfg: TrainConfig) -> Path:
    """cfg.out_dir, if it can be written and holds no model that this run would silently replace."""
    out_dir = check_output_dir(cfg.out_dir)
    trained = [name for name in ("ckpt.pt", "model.bin") if (out_dir / name).exists()]
    if trained and not (cfg.resume or cfg.overwrite):
        raise ValueError(
            f"{out_dir} already holds a trained model ({', '.join(trained)}); pass --resume to continue "
            "training it, --overwrite to replace it, or choose another --out-dir"
        )
    return out_dir


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult | None:
    """Run (or resume) training; rank 0 returns the TrainResult, other ranks None.

    One thread per process by default: tiny matrices gain little from a second thread, a busy
    machine makes threads spin-wait (10x slower measured on a shared 2-core box), and a fixed
    thread count keeps CPU results bit-identical across machines. Use torchrun for more cores.
    """
    check_device(cfg.device)
    check_out_dir(cfg)
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(cfg.threads or threads)
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, progress, started)
    finally:
        torch.set_num_threads(threads)
        if ctx.world_size > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ctx: Distributed, progress: bool, started: float) -> TrainResult | None:
    out_dir = Path(cfg.out_dir)
    log = tqdm.write if ctx.is_main else (lambda _: None)
    args = cfg.model
    prepare = dict(vocab_size=args.vocab_size, tokenizer_model=cfg.tokenizer, val_fraction=cfg.val_fraction)
    problem = None
    if ctx.is_main:  # the others wait, then find the prepared data in the manifest
        try:
            prepare_data(cfg.data, out_dir / "data", **prepare)
        except (OSError, ValueError) as exc:
            problem = exc
    if ctx.from_main(repr(problem) if problem else None) is not None:
        raise problem or RuntimeError(
            f"rank 0 could not prepare the data in {out_dir / 'data'}; see its error"
        )
    prepared = prepare_data(cfg.data, out_dir / "data", **prepare)
    check_vocab(prepared, args.vocab_size)
    train_batches = TokenBatches(prepared.train_shards, args.max_seq_len, cfg.batch_size, cfg.seed)
    val_x, val_y = TokenBatches(prepared.val_shards, args.max_seq_len, cfg.batch_size).windows(
        cfg.eval_windows
    )
    val_tokens = np.concatenate([open_shard(s) for s in prepared.val_shards])
    entropy, bigram = unigram_entropy(val_tokens), bigram_entropy(val_tokens)
    log(
        f"data: train {prepared.train_stories:,} stories / {prepared.train_tokens:,} tokens, "
        f"val {prepared.val_stories:,} stories / {prepared.val_tokens:,} tokens "
        f"({len(val_x)} windows of {args.max_seq_len} per evaluation)"
    )
    log(
        f"validation tokens: unigram entropy {entropy:.4f}, bigram entropy {bigram:.4f} nats/token "
        "(the best losses of a model without context and of one that sees only the previous token)"
    )

    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = Transformer(args)
    init_weights(model)
    model.to(ctx.device).train()
    optimizer = make_optimizer(model, cfg)
    history: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "val_step": [], "val_loss": []}
    step = 0
    checkpoint_path = out_dir / "ckpt.pt"
    if cfg.resume:
        step, history = restore(checkpoint_path, model, optimizer, ctx)
        log(f"resumed from {checkpoint_path} at step {step}")
    log(f"model: {param_count(args):,} parameters, {args}")

    preproc = Preproc.for_model(args).to(ctx.device)
    cos, sin, mask = preproc.full(args.max_seq_len)
    ddp = ctx.world_size > 1
    net = nn.parallel.DistributedDataParallel(model) if ddp else model
    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    tokens_per_step = cfg.batch_size * args.max_seq_len * cfg.grad_accum * ctx.world_size

    def checkpoint() -> None:
        rng_states = [rng_state(ctx.device)]
        if ddp:
            rng_states = [None] * ctx.world_size
            dist.all_gather_object(rng_states, rng_state(ctx.device))
        if ctx.is_main:
            state = {
                "model": model.state_dict(),
                "model_args": args.to_dict(),
                "optimizer": optimizer.state_dict(),
                "iter_num": step,
                "config": asdict(cfg),
                "history": history,
                "rng_states": rng_states,
            }
            save_training_checkpoint(checkpoint_path, state)

    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not (progress and ctx.is_main))
    while step < stop:
        tick = time.perf_counter()
        train_loss = train_step(net, optimizer, train_batches, step, cfg, ctx, (cos, sin, mask))
        tokens_per_s = tokens_per_step / (time.perf_counter() - tick)
        history["step"].append(step)
        history["train_loss"].append(train_loss)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        step += 1
        if step % cfg.eval_interval == 0 or step == stop:
            val_loss = evaluate(model, preproc, val_x, val_y, cfg.batch_size, ctx)
            history["val_step"].append(step)
            history["val_loss"].append(val_loss)
            log(
                f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f} "
                f"(unigram {entropy:.4f}, bigram {bigram:.4f})"
            )
            checkpoint()
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        bar.update()
    bar.close()
    if not ctx.is_main:
        return None
    llama2c_bin = save_llama2c_bin(model.cpu(), out_dir / "model.bin")
    plot = plot_losses(history, out_dir / "loss.png", entropy, bigram)
    seconds = time.perf_counter() - started
    val_loss = history["val_loss"][-1] if history["val_loss"] else float("nan")
    log(
        f"done in {seconds:.0f} s: val loss {val_loss:.4f} vs unigram entropy {entropy:.4f}, "
        f"bigram entropy {bigram:.4f} nats/token"
    )
    log(f"wrote {checkpoint_path} (resumable), {llama2c_bin} (llama2.c), {plot}")
    return TrainResult(
        checkpoint_path, llama2c_bin, plot, prepared, entropy, bigram, val_loss, seconds, history
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
