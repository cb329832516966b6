"""llama2.c's formats: the legacy (v0) .bin that run.c reads, in and out, and its train.py .pt checkpoint."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from ..config import ModelArgs
from ..files import atomic_write, check_output_path
from ..model import Transformer, rope_tables
from .safe_load import CheckpointError, load_torch_file, model_args_of, state_dict_of

LLAMA2C_HEADER = struct.Struct("7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
LLAMA2C_V1_MAGIC = 0x616B3432  # "ak42": llama2.c's newer export versions, which we do not read


def _llama2c_layout(args: ModelArgs) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a llama2.c v0 .bin in file order: name ('{}' = stacked over layers) and one's shape."""
    d, f, v, kv = args.dim, args.ffn_hidden_dim, args.vocab_size, args.kv_heads * args.head_dim
    return [
        ("tok_embeddings.weight", (v, d)),
        ("layers.{}.attention_norm.weight", (d,)),
        ("layers.{}.attention.wq.weight", (d, d)),
        ("layers.{}.attention.wk.weight", (kv, d)),
        ("layers.{}.attention.wv.weight", (kv, d)),
        ("layers.{}.attention.wo.weight", (d, d)),
        ("layers.{}.ffn_norm.weight", (d,)),
        ("layers.{}.feed_forward.w1.weight", (f, d)),
        ("layers.{}.feed_forward.w2.weight", (d, f)),
        ("layers.{}.feed_forward.w3.weight", (f, d)),
        ("norm.weight", (d,)),
        ("freqs_cos", (args.max_seq_len, args.head_dim // 2)),  # unused: RoPE is recomputed
        ("freqs_sin", (args.max_seq_len, args.head_dim // 2)),
    ] + ([] if args.tie_embeddings else [("output.weight", (v, d))])


def llama2c_bin_bytes(args: ModelArgs) -> int:
    """The size of a llama2.c v0 .bin with these hyper-parameters (arithmetic only: safe for any header)."""
    values = sum(
        math.prod(shape) * (args.n_layers if "{}" in name else 1) for name, shape in _llama2c_layout(args)
    )
    return LLAMA2C_HEADER.size + 4 * values


def _llama2c_tensors(args: ModelArgs) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a llama2.c v0 .bin in file order: (name, shape)."""
    return [
        (name.format(i), shape)
        for name, shape in _llama2c_layout(args)
        for i in (range(args.n_layers) if "{}" in name else [None])
    ]


def read_llama2c_bin(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read a llama2.c legacy (v0) .bin: a 7 x int32 header, then fp32 tensors in a fixed order.

    The header is checked against the file size before anything is allocated, so a corrupt or
    hostile header (a billion layers, negative heads) is an error, never a memory blow-up.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(LLAMA2C_HEADER.size)
    if len(head) < LLAMA2C_HEADER.size:
        raise CheckpointError(f"{path}: {size} bytes is too short for a llama2.c header (28 bytes)")
    if struct.unpack_from("I", head)[0] == LLAMA2C_V1_MAGIC:
        raise CheckpointError(
            f"{path} is a llama2.c version 1/2 export; re-export it with llama2.c's "
            "`export.py --version 0` (the legacy format) to load it here"
        )
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = LLAMA2C_HEADER.unpack(head)
    header = (
        f"dim={dim}, hidden_dim={hidden_dim}, n_layers={n_layers}, n_heads={n_heads}, "
        f"n_kv_heads={n_kv_heads}, vocab_size={vocab_size}, seq_len={seq_len}"
    )
    try:
        args = ModelArgs(
            dim=dim,
            hidden_dim=hidden_dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=abs(vocab_size),
            max_seq_len=seq_len,
            tie_embeddings=vocab_size > 0,  # a negative vocab_size marks an untied classifier
        )
    except ValueError as exc:
        raise CheckpointError(
            f"{path} does not start with a valid llama2.c header ({header}): {exc}; "
            "is it a llama2.c .bin? re-download or re-export it"
        ) from None
    expected = llama2c_bin_bytes(args)
    if size != expected:
        what = "truncated" if size < expected else "longer than its header implies"
        raise CheckpointError(
            f"{path} is {what}: the header ({header}) "
            f"implies {expected:,} bytes but the file has {size:,}; re-download or re-export it"
        )
    values = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=LLAMA2C_HEADER.size))
    state, offset = {}, 0
    for name, shape in _llama2c_tensors(args):
        count = math.prod(shape)
        state[name] = values[offset : offset + count].view(shape)
        offset += count
    del state["freqs_cos"], state["freqs_sin"]
    return args, state


def save_llama2c_bin(model: Transformer, path: str | Path) -> Path:
    """Write the model as a llama2.c legacy (v0) .bin that llama2.c's run.c reads."""
    args, state = model.args, model.state_dict()
    tied = torch.equal(state["tok_embeddings.weight"], state["output.weight"])
    header = (args.dim, args.ffn_hidden_dim, args.n_layers, args.n_heads, args.kv_heads)
    header += (args.vocab_size if tied else -args.vocab_size, args.max_seq_len)
    cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)  # llama2.c stores them
    state = {**state, "freqs_cos": cos, "freqs_sin": sin}
    path = check_output_path(path)
    with atomic_write(path) as f:
        f.write(LLAMA2C_HEADER.pack(*header))
        for name, _ in _llama2c_tensors(args.replace(tie_embeddings=tied)):
            f.write(state[name].detach().float().contiguous().numpy().astype("<f4").tobytes())
    return path


def read_llama2c_pt(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read a llama2.c train.py checkpoint: {'model_args': ..., 'model': state dict}."""
    path = Path(path)
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a llama2.c train.py checkpoint (no 'model_args' and 'model')")
    if not isinstance(ckpt["model_args"], dict):
        raise CheckpointError(
            f"{path}: model_args is a {type(ckpt['model_args']).__name__}, not a dict of hyper-parameters"
        )
    known = ModelArgs.__dataclass_fields__
    args = model_args_of(path, {k: v for k, v in ckpt["model_args"].items() if k in known})
    state = {
        k.removeprefix("_orig_mod."): v for k, v in state_dict_of(ckpt["model"], path, "['model']").items()
    }
    state.pop("freqs_cos", None), state.pop("freqs_sin", None)
    if "output.weight" in state and "tok_embeddings.weight" in state:
        args = args.replace(
            tie_embeddings=torch.equal(state["output.weight"], state["tok_embeddings.weight"])
        )
    return args, state
