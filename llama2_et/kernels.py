"""llama2-et's own ExecuTorch operators: attention over the filled positions of the static KV cache,
and the cache write that feeds it.

`llama2_et::filled_attention(q, keys, values, positions)` is defined here for torch.export, with an
eager reference (the same softmax(q K + causal mask) V as `transforms.MatmulAttention`, over the
whole cache) and its `.out` variant, which `to_executorch` calls. Its ExecuTorch kernel,
cpp/filled_attention.cpp, reads keys and values 0..p for a decode step at position p (a prefill
block of queries, to about its furthest one's) and little beyond: decode's attention then costs
what the cache holds so far, not the whole context.

`llama2_et::write_cache(source, cache, positions, dim)` is `cache.index_copy_(dim, positions,
source)` in place, for the same programs: its kernel, cpp/write_cache.cpp, copies a run of
consecutive positions with one memcpy per cache row, where the portable `index_put_` that index_copy_ exports to
computes every element's index. It returns an unused 1-element tensor: the form of a mutating op
that `to_executorch` turns into its `.out` call on the cache in place.

The kernels are compiled into the C++ runner. A Python process (the ExecuTorch runtime,
TextLLMRunner) loads them from the shared library libllama2_et_kernels.so, built beside the runner
(cpp/build.py), which registers them in the kernel registry of the wheel's libexecutorch.so that
both share: `load_kernel_library` before loading a program that calls the ops.
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import torch

NAMESPACE = "llama2_et::"  # a program that calls either op needs the kernel library
_library = torch.library.Library("llama2_et", "DEF")
_library.define("filled_attention(Tensor q, Tensor keys, Tensor values, Tensor positions) -> Tensor")
_library.define(
    "filled_attention.out(Tensor q, Tensor keys, Tensor values, Tensor positions, *, Tensor(a!) out) -> Tensor(a!)"
)


def filled_attention_reference(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """softmax(q @ keys + causal mask) @ values: (Nkv, R, Dh), R = rep * L.

    q (Nkv, R, Dh), already scaled by 1/sqrt(Dh), its row r the token r % L; keys (Nkv, Dh, Lm);
    values (Nkv, Lm, Dh); positions (L,). Row r attends to cache positions 0..positions[r % L].
    """
    rows, n_tokens, max_seq_len = q.shape[1], positions.shape[0], keys.shape[-1]
    row_positions = positions.repeat(rows // n_tokens)  # (R,)
    visible = torch.arange(max_seq_len, device=q.device)[None, :] <= row_positions[:, None]  # (R, Lm)
    mask = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, float("-inf"))
    return torch.softmax(torch.bmm(q, keys) + mask, dim=-1) @ values


def _reference_out(q, keys, values, positions, *, out):
    return out.copy_(filled_attention_reference(q, keys, values, positions))


_library.impl("filled_attention", filled_attention_reference, "CompositeExplicitAutograd")
_library.impl("filled_attention.out", _reference_out, "CompositeExplicitAutograd")
_library.impl("filled_attention", lambda q, keys, values, positions: torch.empty_like(q), "Meta")
_library.impl("filled_attention.out", lambda q, keys, values, positions, *, out: out, "Meta")

_library.define("write_cache(Tensor source, Tensor(a!) cache, Tensor positions, int dim) -> Tensor")
_library.define(
    "write_cache.out(Tensor source, Tensor(a!) cache, Tensor positions, int dim, *, Tensor(b!) out) -> Tensor(b!)"
)


def write_cache_reference(source: torch.Tensor, cache: torch.Tensor, positions: torch.Tensor, dim: int) -> torch.Tensor:
    """cache.index_copy_(dim, positions, source); returns an unused 1-element tensor."""
    cache.index_copy_(dim, positions, source)
    return source.new_empty(1)


def _write_cache_out(source, cache, positions, dim, *, out):
    write_cache_reference(source, cache, positions, dim)
    return out


_library.impl("write_cache", write_cache_reference, "CompositeExplicitAutograd")
_library.impl("write_cache.out", _write_cache_out, "CompositeExplicitAutograd")
_library.impl("write_cache", lambda source, cache, positions, dim: source.new_empty(1), "Meta")
_library.impl("write_cache.out", lambda source, cache, positions, dim, *, out: out, "Meta")

KERNEL_LIBRARY = "libllama2_et_kernels.so"
_loaded: Path | None = None


def calls_kernels(pte_path: str | Path) -> bool:
    """Whether the program names one of the ops (a program stores its operators' names as strings)."""
    if Path(pte_path).stat().st_size == 0:
        return False  # an empty file names nothing (mmap refuses it); loading it reports the problem
    with open(pte_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(NAMESPACE.encode()) != -1


def load_kernel_library(build_dir: str | Path | None = None) -> Path:
    """Build (once, with the C++ runner: cmake and a C++ compiler) and load libllama2_et_kernels.so.

    Loaded with RTLD_GLOBAL, it registers the ops' kernels with the wheel's libexecutorch.so, the
    registry of every ExecuTorch runtime in this process. Loading it twice would register twice,
    so a process loads it once; the library's path is returned.
    """
    global _loaded
    if _loaded is None:
        from .cpp import build_runner

        library = build_runner(build_dir).parent / KERNEL_LIBRARY
        if not library.is_file():
            raise RuntimeError(f"the runner's build has no {library}; rebuild with build_runner(force=True)")
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        _loaded = library
    return _loaded
