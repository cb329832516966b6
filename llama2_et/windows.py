"""Windows of the RoPE tables and the causal mask, sliced by the caller: the preproc design's step.

Slicing a table at a position held in a tensor is data-dependent. In 2023 torch.export could not
do it inside the model, so the original series moved it in front of the model: the program of the
"preproc" design (designs.py) receives cos/sin/mask already sliced for its positions, and its
runtimes slice them with `TableWindows`. The model itself owns the same tables (model.py) and
slices them in its own forward.
"""

from __future__ import annotations

import torch

from .config import ModelArgs
from .generate import check_context
from .model import causal_mask, rope_tables


class TableWindows:
    """The full RoPE tables and causal mask of a context, sliced for a window of positions."""

    def __init__(self, head_dim: int, max_seq_len: int, rope_theta: float = 10000.0):
        self.max_seq_len = max_seq_len
        self.cos, self.sin = rope_tables(head_dim, max_seq_len, rope_theta)  # (Lm, Dh/2)
        self.mask = causal_mask(max_seq_len)  # (Lm, Lm)

    @classmethod
    def for_model(cls, args: ModelArgs) -> TableWindows:
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
        if seq_len < 1 or start_pos < 0:
            raise ValueError(f"a window starts at a position >= 0 and holds >= 1, got {start_pos}, {seq_len}")
        check_context(self.max_seq_len, seq_len, start_pos, context="the RoPE tables and mask")
