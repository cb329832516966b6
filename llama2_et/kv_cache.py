"""A static KV cache: buffers preallocated for max_seq_len positions, written by position."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for every position of the context.

    The buffers never change shape, so an exported program can hold them as mutable state:
    each call writes its new keys/values at `input_pos` and returns the whole cache.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)  # (B, Nkv, Lm, Dh)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Nkv, L, Dh) at positions input_pos (L,); return the caches (B, Nkv, Lm, Dh)."""
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        return self.k_cache, self.v_cache

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


class MatmulKVCache(nn.Module):
    """The same cache for batch 1 in the layout two matmuls read directly: keys (Nkv, Dh, Lm), values (Nkv, Lm, Dh).

    Keys stored transposed make both attention matmuls (q @ K and p @ V) read the cache as their
    right-hand operand, which XNNPACK's batched matmul handles without a transpose per step.
    """

    def __init__(self, n_kv_heads: int, max_seq_len: int, head_dim: int):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(n_kv_heads, head_dim, max_seq_len), persistent=False)
        self.register_buffer("v_cache", torch.zeros(n_kv_heads, max_seq_len, head_dim), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (L, Nkv, Dh) at positions input_pos (L,); return keys (Nkv, Dh, Lm), values (Nkv, Lm, Dh)."""
        self.k_cache.index_copy_(2, input_pos, k.permute(1, 2, 0))  # (Nkv, Dh, L)
        self.v_cache.index_copy_(1, input_pos, v.transpose(0, 1))  # (Nkv, L, Dh)
        return self.k_cache, self.v_cache

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
