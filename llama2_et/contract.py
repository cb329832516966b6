"""The names an exported program (.pte) and its runtimes agree on: ids and metadata methods.

Everything the exporter writes and a runtime reads by name is named here once: the default
BOS/EOS ids and the metadata methods (constant methods in the .pte, the names ExecuTorch's
TextLLMRunner reads). The C++ runner's `contract.h` is generated from this module when the runner
is built (cpp/build.py), so the two cannot drift. The program designs and the inputs their
`forward` takes live in designs.py.
"""

from __future__ import annotations

from .config import ModelArgs

BOS_ID = 1
EOS_ID = 2
# A story ends at EOS, or at BOS: llama2.c's run.c stops when the model emits BOS, the separator
# its TinyStories models learned between stories.
STOP_IDS = (BOS_ID, EOS_ID)

# Metadata methods, each constant named as the method it names. What TextLLMRunner reads
# (ExecuTorch's extension/llm/runner/constants.h) ...
GET_MAX_SEQ_LEN = "get_max_seq_len"
GET_MAX_CONTEXT_LEN = "get_max_context_len"
GET_VOCAB_SIZE = "get_vocab_size"
GET_BOS_ID = "get_bos_id"
GET_EOS_IDS = "get_eos_ids"
GET_N_LAYERS = "get_n_layers"
USE_KV_CACHE = "use_kv_cache"
USE_SDPA_WITH_KV_CACHE = "use_sdpa_with_kv_cache"
ENABLE_DYNAMIC_SHAPE = "enable_dynamic_shape"
# ... and the model's shape, which the preproc design's runtimes build their RoPE tables from.
GET_DIM = "get_dim"
GET_N_HEADS = "get_n_heads"
GET_N_KV_HEADS = "get_n_kv_heads"
GET_HEAD_DIM = "get_head_dim"
GET_ROPE_THETA = "get_rope_theta"

REQUIRED_METADATA = (GET_MAX_SEQ_LEN, GET_VOCAB_SIZE)
TABLES_METADATA = (GET_HEAD_DIM, GET_ROPE_THETA)


def metadata(args: ModelArgs, bos_id: int = BOS_ID, eos_ids: tuple[int, ...] = STOP_IDS) -> dict:
    """The constant methods an exported program carries, with their values for args."""
    return {
        GET_MAX_SEQ_LEN: args.max_seq_len,
        GET_MAX_CONTEXT_LEN: args.max_seq_len,
        GET_VOCAB_SIZE: args.vocab_size,
        GET_BOS_ID: bos_id,
        GET_EOS_IDS: list(eos_ids),
        GET_N_LAYERS: args.n_layers,
        USE_KV_CACHE: True,
        USE_SDPA_WITH_KV_CACHE: False,
        ENABLE_DYNAMIC_SHAPE: True,
        GET_DIM: args.dim,
        GET_N_HEADS: args.n_heads,
        GET_N_KV_HEADS: args.kv_heads,
        GET_HEAD_DIM: args.head_dim,
        GET_ROPE_THETA: float(args.rope_theta),
    }
