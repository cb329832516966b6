"""LLaMA2 in PyTorch: RMSNorm, RoPE, grouped-query attention, SwiGLU, and the Transformer.

Shapes: B batch, L new tokens, Lm max_seq_len, W cache positions attended (L without cache; with
the static cache, the mask's width: Lm, or the filled prefix pos + L), D dim, Nh query heads,
Nkv key/value heads, Dh head_dim, F ffn hidden, V vocab.

The Transformer owns its RoPE tables and causal mask (buffers of Lm rows) and takes the positions of
its tokens: `forward(tokens)` for a whole sequence, `forward(tokens, input_pos)` with the KV cache.
`hidden(tokens, cos, sin, mask, input_pos)` is the entry point with the tables already sliced, which
the preproc and narrow program designs (designs.py) feed themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .kv_cache import KVCache, filled_prefix


def rope_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (Lm, Dh/2), for interleaved-pair RoPE."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (Dh/2,)
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)  # (Lm, Dh/2)
    return torch.cos(angles), torch.sin(angles)


def causal_mask(max_seq_len: int) -> torch.Tensor:
    """Additive mask (Lm, Lm): 0 where query i may attend key j (j <= i), -inf elsewhere."""
    full = torch.full((max_seq_len, max_seq_len), float("-inf"))
    return torch.triu(full, diagonal=1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[2i], x[2i+1]) of x (B, L, H, Dh) by the angles in cos/sin (L, Dh/2)."""
    x_even, x_odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, L, H, Dh/2)
    cos, sin = cos[:, None, :], sin[:, None, :]  # (L, 1, Dh/2), broadcast over heads
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)  # (B, L, H, Dh)


class Attention(nn.Module):
    """Multi-head attention with RoPE and grouped-query key/value heads."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout = args.dropout
        self.kv_cache: KVCache | None = None  # attached by Transformer.setup_kv_cache

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        bsz, seq_len, _ = x.shape
        q = self.wq(x).view(bsz, seq_len, self.n_heads, self.head_dim)  # (B, L, Nh, Dh)
        k = self.wk(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)  # (B, L, Nkv, Dh)
        v = self.wv(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, Dh)
        if input_pos is not None:  # decided at trace time: cached or full-sequence program
            # the positions the mask covers: the filled prefix pos + L, or all Lm
            k, v = self.kv_cache.update(input_pos, k, v, mask.shape[-1])  # (B, Nkv, W, Dh)
        n_rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(n_rep, dim=1)  # (B, Nh, W, Dh)
        v = v.repeat_interleave(n_rep, dim=1)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, Nh, L, Dh)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq_len, -1))  # (B, L, D)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, L, F) -> (B, L, D)


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, mask, input_pos):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token ids (B, L) -> logits. Parameter names follow llama2.c and Meta."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (Lm, Dh/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("causal_mask", causal_mask(args.max_seq_len), persistent=False)  # (Lm, Lm)
        # the mask in the form the layers' attention reads, built once per step for every layer:
        # the identity for `Attention`; a source transformation may swap it (transforms.py)
        self.layer_mask: nn.Module = nn.Identity()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for tokens (B, L) placed at positions input_pos (1,) onward.

        Without input_pos: a whole sequence from position 0, no cache; logits at every position (B, L, V).
        With it: the keys and values are written into the KV cache and attention reads the cache;
        logits of the last position only (B, V), all that decoding needs (as ExecuTorch's llama export).
        """
        seq_len = tokens.shape[1]
        if input_pos is None:  # decided at trace time, like the cache branch in Attention
            cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]  # (L, Dh/2)
            return self.output(self.hidden(tokens, cos, sin, self.causal_mask[:seq_len, :seq_len]))
        return self.attend_prefix(tokens, input_pos, self.args.max_seq_len)

    def attend_prefix(self, tokens: torch.Tensor, input_pos: torch.Tensor, width: int) -> torch.Tensor:
        """Logits (B, V) of the last of tokens (B, L) at positions input_pos (1,) onward, reading
        the first `width` cache positions (W): correct while input_pos + L <= width.

        width is fixed when the program is traced (a shape, not a value), so XNNPACK delegates
        every op; forward reads the whole cache (width Lm), a bucketed program (designs.py) adds
        narrower methods for the early positions.
        """
        if getattr(self.layers[0].attention, "kv_cache", None) is None:
            raise ValueError("forward(tokens, input_pos) writes the KV cache: call setup_kv_cache() first")
        if not 1 <= width <= self.args.max_seq_len:
            raise ValueError(f"width={width} must be in 1..{self.args.max_seq_len} (max_seq_len)")
        # gather the rows of positions input_pos + arange(L): their count is L, a shape, not a value
        positions = torch.arange(tokens.shape[1], dtype=torch.long) + input_pos  # (L,)
        cos = self.rope_cos.index_select(0, positions)  # (L, Dh/2)
        sin = self.rope_sin.index_select(0, positions)
        # rows first, then columns: the columns of L rows, not of the whole (Lm, Lm) table
        mask = filled_prefix(self.causal_mask.index_select(0, positions), 1, width)  # (L, W)
        return self.output(self.hidden(tokens, cos, sin, mask, positions)[:, -1, :])

    def hidden(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normed hidden states (B, L, D) from tables already sliced for the tokens' positions.

        cos, sin (L, Dh/2), mask (L, W); input_pos (L,) writes the KV cache (None: no cache).
        """
        h = self.dropout(self.tok_embeddings(tokens))  # (B, L, D)
        mask = self.layer_mask(mask)  # once per step, shared by every layer
        for layer in self.layers:
            h = layer(h, cos, sin, mask, input_pos)
        return self.norm(h)

    def setup_kv_cache(self, batch_size: int = 1) -> Transformer:
        """Attach a static KV cache of max_seq_len positions to every attention layer."""
        a = self.args
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, a.kv_heads, a.max_seq_len, a.head_dim)
        return self

    def reset_kv_cache(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache.reset()
