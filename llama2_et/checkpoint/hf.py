"""Hugging Face Llama (LlamaForCausalLM): config.json and its weights, renamed to ours and back.

Hugging Face stores the q and k projections with rows permuted for its rotate-half RoPE; ours (like
Meta's and llama2.c's) rotate interleaved pairs, so the rows are permuted on the way in and out.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelArgs
from ..contract import BOS_ID, EOS_ID
from ..model import Transformer
from .safe_load import CheckpointError, load_torch_file, read_json, state_dict_of


def _hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair RoPE rows -> Hugging Face's rotate-half rows, per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _hf_unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half rows -> interleaved-pair rows (inverse of _hf_permute)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")


def args_from_hf_config(config: dict) -> ModelArgs:
    """ModelArgs from a transformers LlamaConfig dict (config.json); a KeyError names a missing field."""
    if missing := [k for k in HF_REQUIRED if k not in config]:
        raise KeyError(", ".join(missing))
    rope = config.get("rope_parameters") or {}
    return ModelArgs(
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab_size=config["vocab_size"],
        hidden_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
        max_seq_len=config.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        tie_embeddings=config.get("tie_word_embeddings", False),
    )


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Rename a LlamaForCausalLM state dict to ours, undoing its q/k row permutation."""
    state = {
        "tok_embeddings.weight": hf_state["model.embed_tokens.weight"],
        "norm.weight": hf_state["model.norm.weight"],
        "output.weight": hf_state.get("lm_head.weight", hf_state["model.embed_tokens.weight"]),
    }
    for i in range(args.n_layers):
        for hf_name, name in HF_LAYER_NAMES.items():
            state[f"layers.{i}.{name}.weight"] = hf_state[f"model.layers.{i}.{hf_name}.weight"]
        q, k = f"layers.{i}.attention.wq.weight", f"layers.{i}.attention.wk.weight"
        state[q] = _hf_unpermute(state[q], args.n_heads)
        state[k] = _hf_unpermute(state[k], args.kv_heads)
    return state


def to_hf(model: Transformer) -> tuple[dict[str, torch.Tensor], dict]:
    """Our model as a transformers LlamaForCausalLM state dict and config dict."""
    a, state = model.args, model.state_dict()
    hf = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(a.n_layers):
        for hf_name, name in HF_LAYER_NAMES.items():
            hf[f"model.layers.{i}.{hf_name}.weight"] = state[f"layers.{i}.{name}.weight"]
        hf[f"model.layers.{i}.self_attn.q_proj.weight"] = _hf_permute(
            state[f"layers.{i}.attention.wq.weight"], a.n_heads
        )
        hf[f"model.layers.{i}.self_attn.k_proj.weight"] = _hf_permute(
            state[f"layers.{i}.attention.wk.weight"], a.kv_heads
        )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.kv_heads,
        "vocab_size": a.vocab_size,
        "intermediate_size": a.ffn_hidden_dim,
        "rms_norm_eps": a.norm_eps,
        "max_position_embeddings": a.max_seq_len,
        "rope_theta": a.rope_theta,
        "tie_word_embeddings": a.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    return {k: v.detach().clone() for k, v in hf.items()}, config


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or a CheckpointError if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-download it") from None


def read_hf(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read a Hugging Face Llama folder: config.json + model.safetensors (or pytorch_model.bin)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing: a Hugging Face checkpoint needs its config.json")
    try:
        args = args_from_hf_config(read_json(config_file))
    except KeyError as exc:
        raise CheckpointError(
            f"{config_file} has no {exc.args[0]}: it is not a Llama config.json (a transformers LlamaConfig)"
        ) from None
    except ValueError as exc:
        raise CheckpointError(f"{config_file}: bad hyper-parameter: {exc}; fix the file") from None
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        hf_state = {k: v for shard in shards for k, v in _load_safetensors(shard).items()}
    elif (folder / "pytorch_model.bin").is_file():
        hf_state = state_dict_of(load_torch_file(folder / "pytorch_model.bin"), folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder} has no *.safetensors or pytorch_model.bin weights")
    try:
        return args, from_hf_state_dict(hf_state, args)
    except KeyError as exc:
        raise CheckpointError(f"{folder} is not a LlamaForCausalLM checkpoint: no tensor {exc}") from None
