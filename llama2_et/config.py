"""Model hyper-parameters: one dataclass, the llama2.c / Meta presets, and size estimates."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real


def _check_number(name: str, value: object, kind: type, optional: bool = False) -> None:
    """A ValueError naming the field unless value is a positive finite number of the kind (or an allowed None)."""
    if value is None and optional:
        return
    what = "an integer" if kind is Integral else "a number"
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class ModelArgs:
    """Hyper-parameters of a LLaMA2 model (names follow llama2.c and Meta's params.json)."""

    dim: int = 288  # D: width of the residual stream
    n_layers: int = 6
    n_heads: int = 6  # Nh: query heads
    n_kv_heads: int | None = None  # Nkv: key/value heads (GQA when < n_heads); None = n_heads
    vocab_size: int = 32000  # V
    hidden_dim: int | None = None  # F: SwiGLU width; None = derived from multiple_of
    multiple_of: int = 32
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    max_seq_len: int = 256  # Lm: the context (and the KV cache length)
    rope_theta: float = 10000.0
    dropout: float = 0.0
    tie_embeddings: bool = True  # llama2.c's "shared classifier"

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "multiple_of"):
            _check_number(name, getattr(self, name), Integral, optional=name in ("n_kv_heads", "hidden_dim"))
        _check_number("max_seq_len", self.max_seq_len, Integral)
        for name in ("ffn_dim_multiplier", "norm_eps", "rope_theta"):
            _check_number(name, getattr(self, name), Real, optional=name == "ffn_dim_multiplier")
        if not (isinstance(self.dropout, Real) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def kv_heads(self) -> int:
        """Nkv, with None resolved to n_heads."""
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        """Dh = D / Nh."""
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """F: 2/3 of 4*D, scaled, rounded up to multiple_of (Meta's rule), unless given."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **changes) -> ModelArgs:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelArgs] = {
    # karpathy/tinyllamas, trained on TinyStories (llama2.c README table)
    "stories260K": ModelArgs(
        dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, multiple_of=4, max_seq_len=512
    ),
    "stories15M": ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256),
    "stories42M": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, max_seq_len=1024),
    "stories110M": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, max_seq_len=1024),
    # Meta's Llama 2 7B params.json (context 4096)
    "llama2-7B": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        vocab_size=32000,
        multiple_of=256,
        max_seq_len=4096,
        tie_embeddings=False,
    ),
}


def preset(name: str) -> ModelArgs:
    """The ModelArgs of a named preset, or a ValueError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def param_count(args: ModelArgs) -> int:
    """Number of parameters, counting a shared classifier once."""
    d, f, v, kv = args.dim, args.ffn_hidden_dim, args.vocab_size, args.kv_heads * args.head_dim
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f + 2 * d  # wq, wk+wv, wo, w1/w2/w3, 2 norms
    classifier = 0 if args.tie_embeddings else v * d
    return v * d + args.n_layers * per_layer + d + classifier


def kv_cache_bytes(args: ModelArgs, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of a static KV cache: K and V, every layer, max_seq_len positions."""
    values = 2 * args.n_layers * batch_size * args.max_seq_len * args.kv_heads * args.head_dim
    return values * bytes_per_value


def weight_bytes(args: ModelArgs, bytes_per_value: float = 4) -> int:
    """Bytes of the weights at a given precision (4 = fp32, 2 = fp16, 0.5 = int4)."""
    return int(param_count(args) * bytes_per_value)
