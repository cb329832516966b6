"""Checkpoint formats in and out: llama2.c .bin and .pt, Meta consolidated.pth, Hugging Face Llama.

Every loader returns ModelArgs plus a state dict in our (llama2.c/Meta) parameter names, checked
against the shapes the args imply; `load_checkpoint` picks the loader from the path.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from .config import ModelArgs
from .contract import BOS_ID, EOS_ID
from .files import atomic_write, atomic_write_text, check_output_dir, check_output_path
from .model import Transformer, rope_tables

LLAMA2C_HEADER = struct.Struct("7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
LLAMA2C_V1_MAGIC = 0x616B3432  # "ak42": llama2.c's newer export versions, which we do not read


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as the format it claims to be."""


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


REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global|Unsupported global: GLOBAL (\S+)")


def load_torch_file(path: str | Path) -> object:
    """torch.load with weights_only=True; a refused pickle or a corrupt file becomes a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as exc:
        if refused := REFUSED_GLOBAL.search(str(exc)):
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors and plain containers "
                f"({refused.group(1) or refused.group(2)}); it was refused because loading it could run "
                "arbitrary code. Re-save the weights with torch.save(model.state_dict(), ...) or as safetensors"
            ) from None
        detail = str(exc).rpartition("WeightsUnpickler error:")[2].strip().splitlines() or [str(exc)]
        error = f"{type(exc).__name__}: {detail[0][:200]}"
    except Exception as exc:  # garbage bytes fail anywhere in the unpickler: IndexError, KeyError, ...
        error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    raise CheckpointError(
        f"{path} is corrupt or not a PyTorch checkpoint ({error}); re-download or re-create it"
    )


def _state_dict(obj: object, path: Path, where: str = "") -> dict[str, torch.Tensor]:
    """obj if it is a dict of named tensors, else a CheckpointError saying what the file holds instead."""
    if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a dict with values other than tensors"
        raise CheckpointError(
            f"{path}{where} holds {found}, not a state dict (names -> tensors); "
            "save the weights with torch.save(model.state_dict(), ...)"
        )
    return obj


def _model_args(path: Path, fields: dict) -> ModelArgs:
    """ModelArgs from a file's hyper-parameters, or a CheckpointError naming the file and the field."""
    try:
        return ModelArgs(**fields)
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad hyper-parameter: {exc}; fix the file") from None


def _read_json(path: Path) -> dict:
    """A JSON object from a file, or a CheckpointError naming the file and the position of the error."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); fix or re-create the file") from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(value).__name__}, not an object of hyper-parameters"
        )
    return value


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
    args = _model_args(path, {k: v for k, v in ckpt["model_args"].items() if k in known})
    state = {
        k.removeprefix("_orig_mod."): v for k, v in _state_dict(ckpt["model"], path, "['model']").items()
    }
    state.pop("freqs_cos", None), state.pop("freqs_sin", None)
    if "output.weight" in state and "tok_embeddings.weight" in state:
        args = args.replace(
            tie_embeddings=torch.equal(state["output.weight"], state["tok_embeddings.weight"])
        )
    return args, state


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
    params = _read_json(params_file)
    state = dict(_state_dict(load_torch_file(shards[0]), shards[0]))
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
    return _model_args(params_file, {**fields, "tie_embeddings": tied}), state


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
        args = args_from_hf_config(_read_json(config_file))
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
        hf_state = _state_dict(load_torch_file(folder / "pytorch_model.bin"), folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder} has no *.safetensors or pytorch_model.bin weights")
    try:
        return args, from_hf_state_dict(hf_state, args)
    except KeyError as exc:
        raise CheckpointError(f"{folder} is not a LlamaForCausalLM checkpoint: no tensor {exc}") from None


def build_model(args: ModelArgs, state: dict[str, torch.Tensor], source: str | Path = "") -> Transformer:
    """A Transformer with the given weights, after checking every name and shape."""
    model = Transformer(args)
    expected = model.state_dict()
    if args.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "output.weight"}
        expected.pop("output.weight")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs args {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        problems = [f"missing {missing[:4]}"] * bool(missing) + [f"unexpected {unexpected[:4]}"] * bool(
            unexpected
        )
        raise CheckpointError(
            f"{source}: weights do not match the hyper-parameters ({'; '.join(problems + wrong[:4])})"
        )
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: tensor {name} has {bad:,} NaN or infinite values (of {tensor.numel():,}); "
                "the checkpoint is corrupt or its training diverged: use another checkpoint"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=not args.tie_embeddings)
    return model.eval()


def read_checkpoint(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """ModelArgs and state dict from any supported format, chosen by the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "params.json").is_file():
            return read_meta(path)
        if (path / "config.json").is_file():
            return read_hf(path)
        raise CheckpointError(f"{path} has neither params.json (Meta) nor config.json (Hugging Face)")
    readers = {".bin": read_llama2c_bin, ".pt": read_llama2c_pt, ".pth": read_meta, ".safetensors": read_hf}
    if path.suffix not in readers:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected one of {', '.join(readers)}"
        )
    return readers[path.suffix](path)


def load_checkpoint(path: str | Path) -> Transformer:
    """Load a llama2.c .bin/.pt, a Meta folder/.pth or a Hugging Face folder into a Transformer."""
    args, state = read_checkpoint(path)
    return build_model(args, state, path)
