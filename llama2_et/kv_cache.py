"""A static KV cache: buffers preallocated for max_seq_len positions, written by position."""

from __future__ import annotations

import torch
from torch import nn


def filled_prefix(cache: torch.Tensor, dim: int, length: int | torch.SymInt) -> torch.Tensor:
    """The first `length` positions of cache along dim: the cache itself when length is a plain int
    equal to Lm (every position), else a copy of that prefix.

    slice_copy rather than the view cache[..., :length]: the view form makes torch.export guard
    length != Lm (a slice of every position is the cache itself), which pins a symbolic length.
    """
    if isinstance(length, int) and length == cache.shape[dim]:
        return cache  # every position: no copy
    return torch.ops.aten.slice_copy.Tensor(cache, dim, 0, length)


class KVCache(nn.Module):
    """Keys and values of one attention layer for every position of the context.

    The buffers never change shape, so an exported program can hold them as mutable state:
    each call writes its new keys/values at `input_pos` and returns the first `attended` positions
    (the mask's width: the filled prefix pos + L, or the whole cache).
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)  # (B, Nkv, Lm, Dh)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attended: int | torch.SymInt
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Nkv, L, Dh) at positions input_pos (L,); return the caches' first W positions.

        W = attended, the mask's width: (B, Nkv, W, Dh), the whole cache when W is Lm.
        """
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        return filled_prefix(self.k_cache, 2, attended), filled_prefix(self.v_cache, 2, attended)

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
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attended: int | torch.SymInt
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (L, Nkv, Dh) at positions input_pos (L,); return the first W = attended positions.

        Keys (Nkv, Dh, W), values (Nkv, W, Dh): the whole cache when W is Lm, as `KVCache.update`.
        """
        self.write(input_pos, k.permute(1, 2, 0), v.transpose(0, 1))  # (Nkv, Dh, L), (Nkv, L, Dh)
        return filled_prefix(self.k_cache, 2, attended), filled_prefix(self.v_cache, 1, attended)

    def write(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys (Nkv, Dh, L) and values (Nkv, L, Dh) into the cache at positions input_pos (L,)."""
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(1, input_pos, v)

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
