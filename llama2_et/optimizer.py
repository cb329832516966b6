"""How the weights move: AdamW with weight decay on matrices only, its warmup + cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from .train_config import TrainConfig


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
