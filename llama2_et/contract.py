"""The contract between an exported program (.pte) and the runtimes that run it.

Everything the exporter writes and a runtime reads is named here once: the program designs and
the inputs their `forward` takes, the metadata methods (constant methods in the .pte, the names
ExecuTorch's TextLLMRunner reads), and the default BOS/EOS ids. The C++ runner mirrors this file
in `cpp/contract.h`.

Designs (chapters 4 and 5 tell their story):
- "narrow": forward(tokens, input_pos) slices the RoPE tables and the mask inside the graph with
  `narrow` at a start read from a tensor. It exports, but XNNPACK cannot delegate what the slice feeds.
- "preproc": forward(tokens, cos, sin, mask, input_pos): the caller slices (the original series' fix).
  Attention reads as many cache positions as the mask has columns, W: a caller that passes the
  filled columns only (W = pos + L) makes it skip the empty slots; W = Lm works too.
- "gather": forward(tokens, input_pos) gathers the table rows at input_pos + arange(L), so their
  count is the tokens' own length, a shape rather than a value. The package exports it by default.
  Its attention reads the filled prefix, pos + L positions, a width it reads from input_pos.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelArgs

BOS_ID = 1
EOS_ID = 2
# A story ends at EOS, or at BOS: llama2.c's run.c stops when the model emits BOS, the separator
# its TinyStories models learned between stories.
STOP_IDS = (BOS_ID, EOS_ID)


@dataclass(frozen=True)
class Signature:
    """The inputs of a program's forward: names and dtypes, in order. Output: logits (1, V)."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]

    def describe(self) -> str:
        return f"{len(self.names)} ({', '.join(self.names)})"


POSITIONS_INPUTS = Signature(("tokens", "input_pos"), ("int64", "int64"))  # tokens (1, L), input_pos (1,)
PREPROC_INPUTS = Signature(
    ("tokens", "cos", "sin", "mask", "input_pos"),  # (1, L), (L, Dh/2) x2, (L, W), (L,); pos + L <= W <= Lm
    ("int64", "float32", "float32", "float32", "int64"),
)
SIGNATURES = {"narrow": POSITIONS_INPUTS, "preproc": PREPROC_INPUTS, "gather": POSITIONS_INPUTS}
DESIGNS = tuple(SIGNATURES)
DEFAULT_DESIGN = "gather"

# Metadata methods: what TextLLMRunner reads (ExecuTorch's extension/llm/runner/constants.h) ...
MAX_SEQ_LEN = "get_max_seq_len"
MAX_CONTEXT_LEN = "get_max_context_len"
VOCAB_SIZE = "get_vocab_size"
BOS = "get_bos_id"
EOS_IDS = "get_eos_ids"
N_LAYERS = "get_n_layers"
USE_KV_CACHE = "use_kv_cache"
USE_SDPA_WITH_KV_CACHE = "use_sdpa_with_kv_cache"
ENABLE_DYNAMIC_SHAPE = "enable_dynamic_shape"
# ... and what the preproc design's runtimes rebuild their RoPE tables and mask from.
DIM = "get_dim"
N_HEADS = "get_n_heads"
N_KV_HEADS = "get_n_kv_heads"
HEAD_DIM = "get_head_dim"
ROPE_THETA = "get_rope_theta"

REQUIRED_METADATA = (MAX_SEQ_LEN, VOCAB_SIZE)
PREPROC_METADATA = (HEAD_DIM, ROPE_THETA)


def signature_of(n_inputs: int) -> Signature | None:
    """The signature a forward with n_inputs inputs follows, or None if no design takes that many."""
    return next((s for s in (POSITIONS_INPUTS, PREPROC_INPUTS) if len(s.names) == n_inputs), None)


def check_design(design: str) -> str:
    """design, or a ValueError listing the designs."""
    if design not in SIGNATURES:
        raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    return design


def metadata(args: ModelArgs, bos_id: int = BOS_ID, eos_ids: tuple[int, ...] = STOP_IDS) -> dict:
    """The constant methods an exported program carries, with their values for args."""
    return {
        MAX_SEQ_LEN: args.max_seq_len,
        MAX_CONTEXT_LEN: args.max_seq_len,
        VOCAB_SIZE: args.vocab_size,
        BOS: bos_id,
        EOS_IDS: list(eos_ids),
        N_LAYERS: args.n_layers,
        USE_KV_CACHE: True,
        USE_SDPA_WITH_KV_CACHE: False,
        ENABLE_DYNAMIC_SHAPE: True,
        DIM: args.dim,
        N_HEADS: args.n_heads,
        N_KV_HEADS: args.kv_heads,
        HEAD_DIM: args.head_dim,
        ROPE_THETA: float(args.rope_theta),
    }
