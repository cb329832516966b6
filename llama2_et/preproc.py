"""RoPE tables, causal masks, and the position-dependent slicing of both.

Slicing a table by a position is data-dependent: the seed series found that export could not
do it inside the model, so it happens here, in a "preproc" step, and the model receives
already-sliced cos/sin/mask. `WithPositions` shows the other design (ExecuTorch's own llama
export): the model receives positions and slices inside the graph with `narrow`.
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

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.max_seq_len = args.max_seq_len
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (Lm, Dh/2)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", causal_mask(args.max_seq_len), persistent=False)  # (Lm, Lm)

    def full(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin (L, Dh/2) and a causal mask (L, L) for a whole sequence without cache."""
        self._check_window(0, seq_len)
        return self.cos[:seq_len], self.sin[:seq_len], self.mask[:seq_len, :seq_len]

    def window(
        self, start_pos: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin (L, Dh/2), mask (L, Lm) and input_pos (L,) for positions start_pos..start_pos+L-1.

        The mask has a row per new token and a column per cache slot, so attention reads the
        whole static cache and ignores slots that are not written yet.
        """
        self._check_window(start_pos, seq_len)
        end = start_pos + seq_len
        input_pos = torch.arange(start_pos, end, dtype=torch.long)
        return self.cos[start_pos:end], self.sin[start_pos:end], self.mask[start_pos:end], input_pos

    def _check_window(self, start_pos: int, seq_len: int) -> None:
        if seq_len < 1 or start_pos < 0 or start_pos + seq_len > self.max_seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + seq_len - 1} do not fit the context of "
                f"{self.max_seq_len} tokens (max_seq_len); shorten the prompt or generate fewer tokens"
            )


class WithPositions(nn.Module):
    """The positions design: forward(tokens, input_pos) slices inside the graph.

    `input_pos` is a (1,) int64 tensor holding the first position, the input that
    ExecuTorch's TextLLMRunner passes. `narrow` with `torch._check` bounds tells
    torch.export the slice stays inside the tables, so the slicing exports.
    Returns the logits of the last position (B, V), as ExecuTorch's llama export does.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.preproc = Preproc(model.args)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seq_len = tokens.shape[1]
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + seq_len <= self.preproc.max_seq_len)
        cos = self.preproc.cos.narrow(0, start, seq_len)  # (L, Dh/2)
        sin = self.preproc.sin.narrow(0, start, seq_len)
        mask = self.preproc.mask.narrow(0, start, seq_len)  # (L, Lm)
        positions = torch.arange(seq_len, dtype=torch.long) + start  # (L,)
        return self.model.last_logits(tokens, cos, sin, mask, positions)
