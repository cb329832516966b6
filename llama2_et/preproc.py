"""RoPE tables, causal masks, and the position-dependent slicing of both: the preproc step.

Slicing a table at a position held in a tensor is data-dependent. In 2023 torch.export could not
do it inside the model, so the original series moved it here, in front of the model: the model
receives cos/sin/mask already sliced for its positions (the "preproc" design, designs.py).
Eager generation and training use the same step.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelArgs


def rope_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (Lm, Dh/2), for interleaved-pair RoPE."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (Dh/2,)
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)  # (Lm, Dh/2)
    return torch.cos(angles), torch.sin(angles)


def causal_mask(max_seq_len: int) -> torch.Tensor:
    """Additive mask (Lm, Lm): 0 where query i may attend key j (j <= i), -inf elsewhere."""
    full = torch.full((max_seq_len, max_seq_len), float("-inf"))
    return torch.triu(full, diagonal=1)


class Preproc(nn.Module):
    """Holds the full tables and slices them for a window of positions, outside the model."""

    def __init__(self, head_dim: int, max_seq_len: int, rope_theta: float = 10000.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        cos, sin = rope_tables(head_dim, max_seq_len, rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (Lm, Dh/2)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", causal_mask(max_seq_len), persistent=False)  # (Lm, Lm)

    @classmethod
    def for_model(cls, args: ModelArgs) -> Preproc:
        """The tables of a model's head_dim, context and RoPE theta."""
        return cls(args.head_dim, args.max_seq_len, args.rope_theta)

    def full(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin (L, Dh/2) and a causal mask (L, L) for a whole sequence without cache."""
        self._check_window(0, seq_len)
        return self.cos[:seq_len], self.sin[:seq_len], self.mask[:seq_len, :seq_len]

    def window(
        self, start_pos: int, seq_len: int, filled_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin (L, Dh/2), mask (L, Lm) and input_pos (L,) for positions start_pos..start_pos+L-1.

        The mask has a row per new token and a column per cache slot, so attention reads the
        whole static cache and ignores slots that are not written yet. filled_only=True keeps the
        columns of the filled slots only, (L, start_pos + L): a program whose attention reads as
        many slots as its mask has columns then reads no empty one.
        """
        self._check_window(start_pos, seq_len)
        end = start_pos + seq_len
        input_pos = torch.arange(start_pos, end, dtype=torch.long)
        mask = self.mask[start_pos:end, :end].contiguous() if filled_only else self.mask[start_pos:end]
        return self.cos[start_pos:end], self.sin[start_pos:end], mask, input_pos

    def _check_window(self, start_pos: int, seq_len: int) -> None:
        if seq_len < 1 or start_pos < 0 or start_pos + seq_len > self.max_seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + seq_len - 1} do not fit the context of "
                f"{self.max_seq_len} tokens (max_seq_len); shorten the prompt or generate fewer tokens"
            )
