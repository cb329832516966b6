"""Checkpoint formats in and out: llama2.c .bin and .pt, Meta consolidated.pth, Hugging Face Llama.

Every reader (llama2c.py, meta.py, hf.py) returns ModelArgs plus a state dict in our (llama2.c/Meta)
parameter names; this module checks it against the shapes the args imply (`build_model`), and
`load_checkpoint` picks the reader from the path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelArgs
from ..model import Transformer
from .hf import read_hf
from .llama2c import LLAMA2C_HEADER, read_llama2c_bin, read_llama2c_pt
from .meta import read_meta
from .safe_load import CheckpointError

__all__ = [
    "LLAMA2C_HEADER",  # with read_llama2c_bin: imported from here by the chapter on generation
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "read_checkpoint",
    "read_llama2c_bin",
]


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
