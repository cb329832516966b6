"""Source transformations: export-time swaps of a module for an equivalent form a backend runs better.

Instead of threading export flags through the model's `forward`, a transformation replaces a
module of the eager model with one that computes the same numbers from ops the backend's
delegate accepts. Each is a function `(model) -> None` that swaps in place, with a one-line why;
backends.py chooses them per backend, and tests/test_transforms.py checks each against eager.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels  # noqa: F401  (defines torch.ops.llama2_et)
from .kv_cache import MatmulKVCache
from .model import Attention, RMSNorm, Transformer


class LinearMeanRMSNorm(nn.Module):
    """RMSNorm with its mean of squares as a matmul by a constant (1, D) row of 1/D."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        dim = norm.weight.shape[0]
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = F.linear(x * x, self.average)  # (B, L, 1)
        return x * torch.rsqrt(mean_square + self.eps) * self.weight


def rms_norm_as_linear(model: Transformer) -> None:
    """Why: XNNPACK delegates linear, not a mean over the last dimension."""
    for layer in model.layers:
        layer.attention_norm = LinearMeanRMSNorm(layer.attention_norm)
        layer.ffn_norm = LinearMeanRMSNorm(layer.ffn_norm)
    model.norm = LinearMeanRMSNorm(model.norm)


def pair_swap_matrix(head_dim: int) -> torch.Tensor:
    """W (Dh, Dh) with F.linear(x, W) = (-x[1], x[0], -x[3], x[2], ...): RoPE's rotate-by-90° of each pair."""
    w = torch.zeros(head_dim, head_dim)
    even = torch.arange(0, head_dim, 2)
    w[even, even + 1] = -1.0
    w[even + 1, even] = 1.0
    return w


def pair_expansion(n_heads: int, head_dim: int) -> torch.Tensor:
    """E (H*Dh, Dh/2) with F.linear(t, E)[:, h*Dh + 2i + j] = t[:, i]: a table per pair, for every head."""
    column = torch.arange(n_heads * head_dim)
    e = torch.zeros(n_heads * head_dim, head_dim // 2)
    e[column, (column % head_dim) // 2] = 1.0
    return e


class MatmulAttention(nn.Module):
    """`Attention` for batch 1 with its cache, written as the linears and batched matmuls XNNPACK delegates.

    - RoPE as multiply-adds, the same rotation as `model.apply_rope`: x * cos + swap(x) * sin, where
      swap is a fixed (Dh, Dh) linear and cos/sin are widened from (L, Dh/2) to every head's columns
      by a fixed linear.
    - The 1/sqrt(Dh) scale is folded into wq.
    - Grouped-query attention without repeat_interleave: the query heads that share a key/value
      head are stacked as rows of one matmul against that head's cache (`MatmulKVCache`).
    - Views keep at most one -1 and no symbolic size, the form XNNPACK's reshape accepts.
    - Attention reads the first W cache positions, W the mask's width: Lm in the gather program's
      forward (the whole cache, read in place), a bucket's width in a bucketed program's
      forward_<W>, pos + L for the preproc design's filled-prefix masks. A prefix narrower than Lm
      is copied out of the cache first (`filled_prefix`).
    The cache is written with index_copy_ at positions that are data, a portable kernel outside the
    delegate: the break in every layer. The mask arrives with its rows already stacked for the
    query heads of a group (`GroupMask`), once per step for every layer.
    """

    cache_type = MatmulKVCache

    def __init__(self, attn: Attention, max_seq_len: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.n_rep = self.n_heads // self.n_kv_heads
        self.wq = nn.Linear(attn.wq.in_features, attn.wq.out_features, bias=False)
        self.wq.weight = nn.Parameter(attn.wq.weight.detach() / math.sqrt(self.head_dim), requires_grad=False)
        self.wk, self.wv, self.wo = attn.wk, attn.wv, attn.wo
        self.register_buffer("pair_swap", pair_swap_matrix(self.head_dim), persistent=False)
        self.register_buffer("expand_q", pair_expansion(self.n_heads, self.head_dim), persistent=False)
        self.register_buffer("expand_k", pair_expansion(self.n_kv_heads, self.head_dim), persistent=False)
        self.kv_cache = self.cache_type(self.n_kv_heads, max_seq_len, self.head_dim)

    def rope(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, expand: torch.Tensor
    ) -> torch.Tensor:
        """Rotate the pairs of x (1, L, H*Dh) by cos/sin (L, Dh/2)."""
        swapped = F.linear(x.view(-1, self.head_dim), self.pair_swap).view(1, -1, x.shape[-1])
        return x * F.linear(cos, expand) + swapped * F.linear(sin, expand)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        nh, nkv, dh, rep = self.n_heads, self.n_kv_heads, self.head_dim, self.n_rep
        q = self.rope(self.wq(x), cos, sin, self.expand_q)  # (1, L, Nh*Dh), already scaled
        k = self.rope(self.wk(x), cos, sin, self.expand_k)  # (1, L, Nkv*Dh)
        v = self.wv(x)
        attended = mask.shape[-1]  # the mask's width: the filled prefix pos + L, or the whole cache
        # mask: (rep*L, W), built once per step by the model's layer_mask (`GroupMask`)
        keys, values = self.kv_cache.update(
            input_pos, k.view(-1, nkv, dh), v.view(-1, nkv, dh), attended
        )  # (Nkv, Dh, W), (Nkv, W, Dh)
        q = q.view(-1, nkv, rep, dh).permute(1, 2, 0, 3).contiguous().view(nkv, -1, dh)  # (Nkv, rep*L, Dh)
        out = self.attend(q, keys, values, mask, input_pos)  # (Nkv, rep*L, Dh)
        out = out.view(nkv, rep, -1, dh).permute(2, 0, 1, 3).contiguous().view(1, -1, nh * dh)  # (1, L, D)
        return self.wo(out)

    def attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        """softmax(q keys + mask) values: q (Nkv, rep*L, Dh), keys (Nkv, Dh, W), values (Nkv, W, Dh)."""
        probs = torch.softmax(torch.bmm(q, keys) + mask, dim=-1)  # (Nkv, rep*L, W)
        return torch.bmm(probs, values)  # (Nkv, rep*L, Dh)


class GroupMask(nn.Module):
    """The mask (L, W) stacked once per query head of a group: (rep*L, W), row r*L + l is mask[l].

    `MatmulAttention` stacks a group's query heads as rows of one matmul, so each needs the mask's
    rows repeated; the model builds them once per step and every layer reads the same tensor.
    """

    def __init__(self, n_rep: int):
        super().__init__()
        self.n_rep = n_rep

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return mask if self.n_rep == 1 else torch.cat([mask] * self.n_rep)  # (rep*L, W)


def attention_as_matmuls(model: Transformer) -> None:
    """Why: XNNPACK delegates linear, bmm and softmax, not repeat_interleave, SDPA or RoPE's pair reshapes."""
    for layer in model.layers:
        layer.attention = MatmulAttention(layer.attention, model.args.max_seq_len)
    model.layer_mask = GroupMask(model.args.n_heads // model.args.kv_heads)


class KernelKVCache(MatmulKVCache):
    """`MatmulKVCache` written by llama2-et's own op, `llama2_et::write_cache` (kernels.py), for the
    programs that already need the package's kernels: a run of consecutive positions is copied one
    block per cache row, where index_copy_'s portable kernel indexes every element.
    """

    def write(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        torch.ops.llama2_et.write_cache(k, self.k_cache, input_pos, 2)
        torch.ops.llama2_et.write_cache(v, self.v_cache, input_pos, 1)


class FilledCacheAttention(MatmulAttention):
    """`MatmulAttention` whose two matmuls, mask and softmax are one op, `llama2_et::filled_attention`.

    The op (defined in kernels.py; its kernel is cpp/filled_attention.cpp) reads the cache only
    as far as it is filled, in the cache's own layout: a query at position p from positions 0..p (a
    prefill block of queries reads to about its furthest one's), where the matmuls read all W
    positions. The mask goes unused, and the op runs outside the delegate, between the cache
    writes and the next delegate call. The cache writes are the package's op too (`KernelKVCache`).
    """

    cache_type = KernelKVCache

    def attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        """The same attention, each row to its own position: q (Nkv, rep*L, Dh), input_pos (L,)."""
        return torch.ops.llama2_et.filled_attention(q, keys, values, input_pos)  # (Nkv, rep*L, Dh)


def attention_over_filled_cache(model: Transformer) -> None:
    """Why: XNNPACK's matmuls take no run-time length, so they read every cache position each step."""
    for layer in model.layers:
        layer.attention = FilledCacheAttention(layer.attention, model.args.max_seq_len)
