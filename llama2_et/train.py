"""Train a LLaMA2 on TinyStories: the training loop, from prepared shards to a llama2.c .bin.

One process: `python -m llama2_et train`. Several: `torchrun --nproc_per_node N -m llama2_et train`
(DistributedDataParallel, gloo on CPU, nccl on GPU). The model is the core `Transformer`: `model(x)`
reads a whole sequence from position 0 with its own RoPE tables and causal mask. The loop's parts live beside it: what a
run depends on (train_config.py), AdamW and its schedule (optimizer.py), the processes of a run
(distributed.py), evaluation (evaluation.py) and the resumable checkpoint (train_checkpoint.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint.llama2c import save_llama2c_bin
from .config import param_count
from .data import PreparedData, TokenBatches, open_shard, prepare_data
from .distributed import Distributed, init_distributed
from .evaluation import HeldOut, evaluate, held_out, plot_losses
from .files import check_output_dir
from .generate import check_vocabulary
from .model import Transformer
from .optimizer import lr_at, make_optimizer
from .tokenizer import Tokenizer
from .train_checkpoint import restore, save_checkpoint
from .train_config import TrainConfig

# chapter 10 imports TrainConfig, lr_at and make_optimizer from here, with the loop that uses them
__all__ = ["TrainConfig", "TrainResult", "lr_at", "make_optimizer", "train", "train_step"]


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


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: TokenBatches,
    step: int,
    cfg: TrainConfig,
    ctx: Distributed,
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
            logits = net(x)  # (B, L, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over B * L predictions
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(ctx.mean(loss_sum / cfg.grad_accum))


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
    """The run in this process: data, model (new or resumed), the steps, then rank 0's files."""
    log = tqdm.write if ctx.is_main else (lambda _: None)
    prepared = _prepare_data(cfg, ctx)
    held = held_out(prepared, cfg.model.max_seq_len, cfg.eval_windows)
    log(
        f"data: train {prepared.train_stories:,} stories / {prepared.train_tokens:,} tokens, "
        f"val {prepared.val_stories:,} stories / {prepared.val_tokens:,} tokens "
        f"({len(held.x)} windows of {cfg.model.max_seq_len} per evaluation)"
    )
    log(
        f"validation tokens: unigram entropy {held.unigram_entropy:.4f}, bigram entropy "
        f"{held.bigram_entropy:.4f} nats/token (the best losses of a model without context and of one "
        "that sees only the previous token)"
    )
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = Transformer(cfg.model)
    init_weights(model)
    model.to(ctx.device).train()
    optimizer = make_optimizer(model, cfg)
    history: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "val_step": [], "val_loss": []}
    step = 0
    if cfg.resume:
        step, history = restore(Path(cfg.out_dir) / "ckpt.pt", model, optimizer, ctx)
        log(f"resumed from {Path(cfg.out_dir) / 'ckpt.pt'} at step {step}")
    log(f"model: {param_count(cfg.model):,} parameters, {cfg.model}")
    _run_steps(cfg, ctx, model, optimizer, prepared, held, step, history, progress, log)
    if not ctx.is_main:
        return None
    return _write_results(cfg, model, prepared, held, history, time.perf_counter() - started, log)


def _prepare_data(cfg: TrainConfig, ctx: Distributed) -> PreparedData:
    """Tokenizer and shards made by rank 0 (the others wait, then read its manifest), checked against the model."""
    out_dir, vocab_size = Path(cfg.out_dir), cfg.model.vocab_size
    prepare = dict(vocab_size=vocab_size, tokenizer_model=cfg.tokenizer, val_fraction=cfg.val_fraction)
    problem = None
    if ctx.is_main:
        try:
            prepare_data(cfg.data, out_dir / "data", **prepare)
        except (OSError, ValueError) as exc:
            problem = exc
    if ctx.from_main(repr(problem) if problem else None) is not None:
        raise problem or RuntimeError(
            f"rank 0 could not prepare the data in {out_dir / 'data'}; see its error"
        )
    prepared = prepare_data(cfg.data, out_dir / "data", **prepare)
    tokenizer = Tokenizer(prepared.tokenizer_model)
    fix = f"pass --vocab-size {tokenizer.vocab_size} or a tokenizer with {vocab_size} pieces"
    check_vocabulary(vocab_size, tokenizer=tokenizer, fix=fix)
    for shard in prepared.train_shards + prepared.val_shards:
        check_vocabulary(
            vocab_size,
            [int(open_shard(shard).max())],
            source=shard,
            fix="it was made with another tokenizer; delete the data folder to pretokenize again",
        )
    return prepared


def _run_steps(
    cfg: TrainConfig,
    ctx: Distributed,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    prepared: PreparedData,
    held: HeldOut,
    step: int,
    history: dict[str, list],
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Optimizer steps from `step` to the stop step, recorded in history; evaluate and checkpoint every eval_interval."""
    args = cfg.model
    train_batches = TokenBatches(prepared.train_shards, args.max_seq_len, cfg.batch_size, cfg.seed)
    ddp = ctx.world_size > 1
    net = nn.parallel.DistributedDataParallel(model) if ddp else model
    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    tokens_per_step = cfg.batch_size * args.max_seq_len * cfg.grad_accum * ctx.world_size
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not (progress and ctx.is_main))
    while step < stop:
        tick = time.perf_counter()
        train_loss = train_step(net, optimizer, train_batches, step, cfg, ctx)
        tokens_per_s = tokens_per_step / (time.perf_counter() - tick)
        history["step"].append(step)
        history["train_loss"].append(train_loss)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        step += 1
        if step % cfg.eval_interval == 0 or step == stop:
            val_loss = evaluate(model, held.x, held.y, cfg.batch_size, ctx)
            history["val_step"].append(step)
            history["val_loss"].append(val_loss)
            save_checkpoint(Path(cfg.out_dir) / "ckpt.pt", model, optimizer, step, history, cfg, ctx)
            log(
                f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f} "
                f"(unigram {held.unigram_entropy:.4f}, bigram {held.bigram_entropy:.4f}); saved ckpt.pt"
            )
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        bar.update()
    bar.close()


def _write_results(
    cfg: TrainConfig,
    model: Transformer,
    prepared: PreparedData,
    held: HeldOut,
    history: dict[str, list],
    seconds: float,
    log: Callable[[str], None],
) -> TrainResult:
    """Rank 0's files after the last step (the llama2.c .bin, the loss plot) and the run's result."""
    out_dir = Path(cfg.out_dir)
    entropy, bigram = held.unigram_entropy, held.bigram_entropy
    llama2c_bin = save_llama2c_bin(model.cpu(), out_dir / "model.bin")
    plot = plot_losses(history, out_dir / "loss.png", entropy, bigram)
    val_loss = history["val_loss"][-1] if history["val_loss"] else float("nan")
    log(
        f"done in {seconds:.0f} s: val loss {val_loss:.4f} vs unigram entropy {entropy:.4f}, "
        f"bigram entropy {bigram:.4f} nats/token"
    )
    checkpoint_path = out_dir / "ckpt.pt"
    log(f"wrote {checkpoint_path} (resumable), {llama2c_bin} (llama2.c), {plot}")
    return TrainResult(
        checkpoint_path, llama2c_bin, plot, prepared, entropy, bigram, val_loss, seconds, history
    )
