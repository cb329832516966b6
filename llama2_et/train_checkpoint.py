"""The resumable training checkpoint (out_dir/ckpt.pt): weights, optimizer, step, history, RNG states."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint.safe_load import CheckpointError, load_torch_file
from .config import ModelArgs
from .distributed import Distributed
from .files import atomic_write
from .model import Transformer
from .train_config import TrainConfig

CHECKPOINT_KEYS = ("model", "model_args", "optimizer", "iter_num", "config", "history", "rng_states")


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


def save_checkpoint(
    path: Path,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: dict,
    cfg: TrainConfig,
    ctx: Distributed,
) -> None:
    """Rank 0 writes the run's state with every process's RNG state (a collective: every process calls it)."""
    rng_states = [rng_state(ctx.device)]
    if ctx.world_size > 1:
        rng_states = [None] * ctx.world_size
        dist.all_gather_object(rng_states, rng_state(ctx.device))
    if ctx.is_main:
        state = {
            "model": model.state_dict(),
            "model_args": model.args.to_dict(),
            "optimizer": optimizer.state_dict(),
            "iter_num": step,
            "config": asdict(cfg),
            "history": history,
            "rng_states": rng_states,
        }
        save_training_checkpoint(path, state)
