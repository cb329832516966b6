"""What every checkpoint reader shares: torch.load of untrusted files, JSON, and errors that name the file.

A checkpoint comes from elsewhere: torch.load runs with weights_only=True, and a file that is not what
it claims to be becomes a `CheckpointError` that says which file and why, never a traceback.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from ..config import ModelArgs


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as the format it claims to be."""


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


def state_dict_of(obj: object, path: Path, where: str = "") -> dict[str, torch.Tensor]:
    """obj if it is a dict of named tensors, else a CheckpointError saying what the file holds instead."""
    if not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a dict with values other than tensors"
        raise CheckpointError(
            f"{path}{where} holds {found}, not a state dict (names -> tensors); "
            "save the weights with torch.save(model.state_dict(), ...)"
        )
    return obj


def model_args_of(path: Path, fields: dict) -> ModelArgs:
    """ModelArgs from a file's hyper-parameters, or a CheckpointError naming the file and the field."""
    try:
        return ModelArgs(**fields)
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad hyper-parameter: {exc}; fix the file") from None


def read_json(path: Path) -> dict:
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
