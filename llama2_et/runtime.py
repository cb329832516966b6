"""A .pte as a decoder: load it with executorch.runtime, prefill, decode, and generate.

`PteDecoder` implements the decoder protocol of generate.py (`max_seq_len`, `vocab_size`,
`stop_ids`, `reset()`, `step(tokens, start_pos) -> logits (V,)`), so the same generation loop and
samplers drive eager PyTorch and the exported program, and greedy output matches token for token.
It serves every program design (designs.py), told apart by their inputs: (tokens, input_pos) for
the gather and narrow designs, (tokens, cos, sin, mask, input_pos) for the preproc design, for
which this class slices the RoPE tables and the mask itself (`TableWindows`). A bucketed gather
program (export_pte(buckets=...)) adds methods forward_<W> that attend the first W cache positions
only, sharing forward's cache; each step calls the narrowest that covers its positions.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from . import contract, designs, integrity, kernels
from .generate import check_context, check_vocabulary
from .windows import TableWindows

SCALAR_TYPES = {4: "int64", 6: "float32"}  # c10::ScalarType codes in MethodMeta's TensorInfo
PTE_MAGIC = b"ET"  # bytes 4..5 of every ExecuTorch program (flatbuffer file identifier "ETnn")
EXPORT_HINT = "export one with `python -m llama2_et export --checkpoint ... --out FILE.pte`"


def register_llm_custom_ops(pte_path: str | Path | None = None) -> None:
    """Register the kernels beyond the portable ones that LLM programs call (the imports register them).

    ExecuTorch's LLM ops (llama::custom_sdpa, update_cache) that export_llm's programs call, and the
    quantized embedding lookups (quantized_decomposed::embedding_byte, embedding_4bit) of a program
    exported with a quantized token table, ours or export_llm's; and llama2-et's own
    filled_attention and write_cache when the program at pte_path calls them (kernels.py: built on first use).
    """
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401

    if pte_path is not None and kernels.calls_kernels(pte_path):
        kernels.load_kernel_library()


# executorch::runtime::set_option(const char*, Span<BackendOption>) in the wheel's libexecutorch.so,
# which the Python bindings do not expose; BackendOption is {char key[64]; std::variant<bool, int,
# std::array<char, 256>> value}: 256 bytes of value, then the variant's index (0: bool), padded to 4.
SET_OPTION_SYMBOL = "_ZN10executorch7runtime10set_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"


class _BackendOption(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char * 64), ("value", ctypes.c_uint8 * 256), ("index", ctypes.c_uint32)]


def share_packed_weights() -> None:
    """Turn on XNNPACK's weight cache for this process: a weight is packed once for every method.

    Without it each method's delegate packs its own copy when the method loads, so a bucketed
    program holds its weights once per method (stories15M, 8 methods: +415 MiB RSS, load 0.3 -> 0.8 s).
    The C++ runner sets the same option through ExecuTorch's C++ API; Python has no binding for
    it, so this calls that function in the wheel's libexecutorch.so, declared as ExecuTorch 1.5
    declares it (tests/test_runtime.py checks the effect).
    """
    import executorch

    library = Path(executorch.__path__[0]) / "lib" / "libexecutorch.so"
    try:
        set_option = getattr(ctypes.CDLL(str(library)), SET_OPTION_SYMBOL)
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"cannot find ExecuTorch's set_option in {library} ({exc})") from None
    set_option.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]  # name, Span {data, size}
    set_option.restype = ctypes.c_int  # executorch::runtime::Error, 0 = Ok
    option = _BackendOption(key=b"weight_cache_enabled", index=0)  # the bool alternative
    option.value[0] = 1  # true
    error = set_option(b"XnnpackBackend", ctypes.addressof(option), 1)
    if error != 0:
        raise RuntimeError(f"XNNPACK refused weight_cache_enabled (ExecuTorch error {error})")


class PteDecoder:
    """An exported program (.pte) with its KV cache in the program's mutable buffers."""

    def __init__(self, pte_path: str | Path, enable_etdump: bool = False):
        """Load and check the program; enable_etdump records every instruction's time (bench/profile.py)."""
        path = Path(pte_path)
        if not path.is_file():
            raise FileNotFoundError(f"program not found: {path}; {EXPORT_HINT}")
        with path.open("rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:6] != PTE_MAGIC:
            raise ValueError(f"{path} is not an ExecuTorch program (no 'ET' file identifier); {EXPORT_HINT}")
        from executorch.runtime import Runtime

        self.sealed = integrity.verify(path)  # a damaged file is refused before ExecuTorch reads it
        register_llm_custom_ops(path)
        self.path = path
        try:
            self.program = Runtime.get().load_program(path, enable_etdump=enable_etdump)
            buckets = self._bucket_methods()
            if buckets:
                share_packed_weights()  # before any method loads (and packs its weights)
            self.method = (
                self.program.load_method("forward") if "forward" in self.program.method_names else None
            )
            # every bucket loaded now, after forward: loading a method sets its initialized buffers,
            # and forward's zeros must reach the shared cache before any step, never after one
            self.buckets = [(w, self.program.load_method(buckets[w])) for w in sorted(buckets)]
        except RuntimeError as exc:
            raise ValueError(
                f"{path} cannot be loaded ({exc}): truncated or corrupt? {EXPORT_HINT}"
            ) from None
        if self.method is None:
            raise ValueError(f"{path} has no 'forward' method; {EXPORT_HINT}")
        self.metadata = self._read_metadata()
        n_inputs = self.method.metadata.num_inputs()
        self.signature = designs.signature_of(n_inputs)
        if self.signature is None:
            raise ValueError(
                f"{path}: forward takes {n_inputs} inputs, but a llama2_et program takes "
                f"{designs.POSITIONS_INPUTS.describe()} or {designs.PREPROC_INPUTS.describe()}; {EXPORT_HINT}"
            )
        self._check_inputs()
        self.max_seq_len = int(self.metadata[contract.GET_MAX_SEQ_LEN])
        self.vocab_size = int(self.metadata[contract.GET_VOCAB_SIZE])
        self.stop_ids = tuple(int(i) for i in self.metadata.get(contract.GET_EOS_IDS, contract.STOP_IDS))
        self.windows = self._windows() if self.signature is designs.PREPROC_INPUTS else None
        self.cached = 0  # positions 0..cached-1 hold this sequence's keys and values

    def _read_metadata(self) -> dict[str, object]:
        """The constant methods (get_max_seq_len, ...) as Python values."""
        names = self.program.method_names
        missing = [name for name in contract.REQUIRED_METADATA if name not in names]
        if missing:
            raise ValueError(
                f"{self.path} lacks the metadata methods {', '.join(missing)}: not a llama2_et or "
                f"ExecuTorch LLM program; {EXPORT_HINT}"
            )
        values = {}
        for name in names - {"forward", *self._bucket_methods().values()}:
            out = self.program.load_method(name).execute([])
            values[name] = out[0] if len(out) == 1 and name != contract.GET_EOS_IDS else list(out)
        return values

    def _bucket_methods(self) -> dict[int, str]:
        """The program's bucket methods forward_<W> by width W (none for a program without buckets)."""
        names = self.program.method_names
        return {designs.bucket_width(name): name for name in names if designs.bucket_width(name) is not None}

    def _method_for(self, end: int):
        """The narrowest method whose attended width covers positions ..end-1: a bucket, or forward."""
        return next((method for width, method in self.buckets if end <= width), self.method)

    def _check_inputs(self) -> None:
        """The forward inputs must have the dtypes of the signature (contract.py)."""
        meta = self.method.metadata
        dtypes = [
            SCALAR_TYPES.get(meta.input_tensor_meta(i).dtype(), "other") for i in range(meta.num_inputs())
        ]
        expected = list(self.signature.dtypes)
        if dtypes != expected:
            raise ValueError(
                f"{self.path}: forward input dtypes {dtypes} do not match the inputs "
                f"{self.signature.describe()} ({', '.join(expected)}); {EXPORT_HINT}"
            )

    def _windows(self) -> TableWindows:
        """The RoPE tables and mask of the preproc design, rebuilt from the program's metadata."""
        missing = [name for name in contract.TABLES_METADATA if name not in self.metadata]
        if missing:
            raise ValueError(f"{self.path} lacks the metadata {', '.join(missing)}; {EXPORT_HINT}")
        m = self.metadata
        return TableWindows(
            int(m[contract.GET_HEAD_DIM]), self.max_seq_len, float(m[contract.GET_ROPE_THETA])
        )

    def reset(self) -> None:
        """Start a new sequence.

        The cache buffers keep the old keys and values, but they are never read: the next step
        starts at position 0, every step writes its positions before attending, and the causal
        mask hides every slot past the current position. `step` refuses to skip positions, so
        no slot is read before this sequence wrote it. (Reloading the program would clear them
        too, at the cost of re-packing every weight.)
        """
        self.cached = 0

    def step(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Run tokens at positions start_pos.. and return the logits (V,) after the last one."""
        n = len(tokens)
        if n == 0:
            raise ValueError("step needs at least one token")
        if start_pos < 0 or start_pos > self.cached:
            raise ValueError(
                f"start_pos={start_pos} but the cache holds positions 0..{self.cached - 1}: decode "
                "positions in order (reset() and prefill from 0 to start over)"
            )
        check_context(self.max_seq_len, n, start_pos, context=f"the cache of {self.path}")
        check_vocabulary(self.vocab_size, tokens)
        x = torch.tensor([tokens], dtype=torch.long)  # (1, L)
        if self.windows is None:
            inputs = [x, torch.tensor([start_pos], dtype=torch.long)]
        else:
            # cos, sin (L, Dh/2), mask (L, pos + L): attention reads the filled cache only, input_pos (L,)
            inputs = [x, *self.windows.window(start_pos, n, filled_only=True)]
        try:
            logits = self._method_for(start_pos + n).execute(inputs)[0]  # (1, V)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{self.path}: forward failed at positions {start_pos}..{start_pos + n - 1}: {exc}"
            ) from None
        self.cached = start_pos + n
        return logits.reshape(-1)[-self.vocab_size :]  # (V,): the last position's row
