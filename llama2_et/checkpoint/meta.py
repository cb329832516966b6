"""Meta's format: consolidated.00.pth beside params.json, in and out (export_llm reads it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelArgs
from ..files import atomic_write, atomic_write_text, check_output_dir
from ..model import Transformer
from .safe_load import CheckpointError, load_torch_file, model_args_of, read_json, state_dict_of

META_PARAMS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of")
META_PARAMS += ("ffn_dim_multiplier", "norm_eps", "rope_theta", "max_seq_len", "hidden_dim")


def read_meta(path: str | Path, max_seq_len: int | None = None) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read Meta's format: a folder (or its consolidated.00.pth) with params.json beside it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    shards = sorted(folder.glob("consolidated.*.pth")) if path.is_dir() else [path]
    if not shards:
        raise CheckpointError(f"{folder} has no consolidated.*.pth")
    if len(shards) > 1:
        raise CheckpointError(f"{folder} has {len(shards)} model-parallel shards; merge them into one first")
    params_file = folder / "params.json"
    if not params_file.is_file():
        raise CheckpointError(f"{params_file} is missing: Meta checkpoints keep their hyper-parameters there")
    params = read_json(params_file)
    state = dict(state_dict_of(load_torch_file(shards[0]), shards[0]))
    state.pop("rope.freqs", None)
    if "tok_embeddings.weight" not in state:
        raise CheckpointError(
            f"{shards[0]} has no tensor 'tok_embeddings.weight': it is not a Meta Llama checkpoint"
        )
    fields = {k: params[k] for k in META_PARAMS if params.get(k) is not None}
    if fields.get("vocab_size", -1) == -1:  # Meta's own params.json says -1: take it from the weights
        fields["vocab_size"] = state["tok_embeddings.weight"].shape[0]
    if max_seq_len is not None:
        fields["max_seq_len"] = max_seq_len
    tied = "output.weight" not in state or torch.equal(state["output.weight"], state["tok_embeddings.weight"])
    return model_args_of(params_file, {**fields, "tie_embeddings": tied}), state


def save_meta(model: Transformer, out_dir: str | Path) -> Path:
    """Write consolidated.00.pth + params.json (the input of ExecuTorch's export_llm)."""
    out = check_output_dir(out_dir)
    a = model.args
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # unties a shared classifier
    with atomic_write(out / "consolidated.00.pth") as f:
        torch.save(state, f)
    params = {k: getattr(a, k) for k in META_PARAMS if k != "hidden_dim" and getattr(a, k) is not None}
    params["n_kv_heads"], params["hidden_dim"] = a.kv_heads, a.ffn_hidden_dim
    atomic_write_text(out / "params.json", json.dumps(params, indent=2))
    return out
