"""The three program designs: how an exported program learns the positions of its tokens.

Each is a module whose forward returns the logits of the last position (1, V), as ExecuTorch's own
llama export does, with the KV cache of the model's layers as mutable state. Chapters 4 and 5 tell
why there are three; `SIGNATURES` names each one's inputs, which the runtimes tell apart by count.

- "narrow": `NarrowProgram`, forward(tokens, input_pos): slices the model's RoPE tables and mask
  with `narrow` at a start read from a tensor. `torch._check` hints make it export, but XNNPACK
  cannot delegate what the slice feeds.
- "preproc": `PreprocProgram`, forward(tokens, cos, sin, mask, input_pos): the caller slices
  (`windows.TableWindows`), the original series' fix. Attention reads as many cache positions as
  the mask has columns, W: a caller that passes the filled columns only (W = pos + L) makes decode
  read no empty slot, and XNNPACK still runs the attention.
- "gather": the Transformer itself, forward(tokens, input_pos): it gathers its table rows at
  input_pos + arange(L), so their count is the tokens' own length L, a shape rather than a value,
  and every op it feeds stays delegable. Its mask rows keep all Lm columns, so attention reads the
  whole cache and masks the empty slots: cutting them at input_pos + L would make the width a value
  read from a tensor, which XNNPACK does not delegate. The package exports it by default.

A gather program may also carry buckets (`bucket_programs`): methods forward_<W> whose mask keeps
its first W columns, a width fixed at export, so XNNPACK delegates them too; they share forward's
KV cache, and a runtime calls the narrowest whose W covers the step's positions. Decode then reads
about as many cache positions as are filled, at the cost of copying that prefix out of the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

from .model import Transformer
from .windows import TableWindows


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


def signature_of(n_inputs: int) -> Signature | None:
    """The signature a forward with n_inputs inputs follows, or None if no design takes that many."""
    return next((s for s in (POSITIONS_INPUTS, PREPROC_INPUTS) if len(s.names) == n_inputs), None)


def check_design(design: str) -> str:
    """design, or a ValueError listing the designs."""
    if design not in SIGNATURES:
        raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    return design


class NarrowProgram(nn.Module):
    """forward(tokens (1, L), input_pos (1,)): `narrow` the model's tables at the start held in input_pos.

    `torch._check` bounds tell torch.export the slice stays inside the tables, so it exports; but
    the slice's start is a value read from a tensor, and XNNPACK cannot delegate what it feeds.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seq_len, model = tokens.shape[1], self.model
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + seq_len <= model.args.max_seq_len)
        cos = model.rope_cos.narrow(0, start, seq_len)  # (L, Dh/2)
        sin = model.rope_sin.narrow(0, start, seq_len)
        mask = model.causal_mask.narrow(0, start, seq_len)  # (L, Lm)
        positions = torch.arange(seq_len, dtype=torch.long) + start  # (L,)
        return model.output(model.hidden(tokens, cos, sin, mask, positions)[:, -1, :])  # (1, V)


class PreprocProgram(nn.Module):
    """forward(tokens (1, L), cos, sin (L, Dh/2), mask (L, W), input_pos (L,)): sliced by the caller.

    Attention reads the first W cache positions, W the mask's width: pos + L when the caller
    slices the filled columns only (`TableWindows.window(..., filled_only=True)`), Lm when it slices all.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        return model.output(model.hidden(tokens, cos, sin, mask, input_pos)[:, -1, :])  # (1, V)


class PrefixProgram(nn.Module):
    """forward(tokens (1, L), input_pos (1,)) of the gather design, attending the first `width` cache positions.

    A bucketed program holds one per width (its methods, `bucket_programs`), all sharing the model's
    KV cache; a runtime calls the narrowest whose width covers input_pos + L.
    """

    def __init__(self, model: Transformer, width: int):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model.attend_prefix(tokens, input_pos, self.width)  # (1, V)


BUCKET_PREFIX = "forward_"  # a bucket's method: forward_<width>; "forward" itself reads all Lm positions


def bucket_method(width: int) -> str:
    """The method name of the bucket that attends the first `width` cache positions."""
    return f"{BUCKET_PREFIX}{width}"


def bucket_width(method: str) -> int | None:
    """The width of a bucket's method name, or None for any other method."""
    tail = method.removeprefix(BUCKET_PREFIX)
    return int(tail) if method.startswith(BUCKET_PREFIX) and tail.isdigit() else None


def check_buckets(buckets: tuple[int, ...], max_seq_len: int) -> tuple[int, ...]:
    """The bucket widths sorted, each in 2..max_seq_len - 1 (max_seq_len is forward itself), or a ValueError."""
    bad = [w for w in buckets if not 2 <= w < max_seq_len]
    if bad:
        raise ValueError(
            f"bucket widths {bad} must be in 2..{max_seq_len - 1}: forward already reads all "
            f"{max_seq_len} positions (max_seq_len)"
        )
    return tuple(sorted(set(buckets)))


def program(model: Transformer, design: str) -> nn.Module:
    """The module to export for a design: a wrapper for narrow and preproc, the model itself for gather."""
    if check_design(design) == "gather":
        return model
    return NarrowProgram(model) if design == "narrow" else PreprocProgram(model)


def program_and_inputs(
    model: Transformer, design: str, seq_len: int = 2
) -> tuple[nn.Module, tuple[torch.Tensor, ...], tuple]:
    """The module to export for a design, example inputs of seq_len tokens, and their dynamic shapes.

    One `Dim` for the token count L (1..max_seq_len) lets one program serve prefill and decode.
    """
    module = program(model, design)
    tokens = torch.zeros(1, seq_len, dtype=torch.long)  # (1, L)
    length = Dim("seq_len", min=1, max=model.args.max_seq_len)
    if design == "preproc":
        # the example's mask is narrower than the cache, so export keeps its width a symbol
        inputs = (tokens, *TableWindows.for_model(model.args).window(1, seq_len, filled_only=True))
        attended = Dim("attended", min=1, max=model.args.max_seq_len)
        mask = {0: length, 1: attended}
        return module, inputs, ({1: length}, {0: length}, {0: length}, mask, {0: length})
    return module, (tokens, torch.tensor([0])), ({1: length}, None)


def bucket_programs(
    model: Transformer, buckets: tuple[int, ...], seq_len: int = 2
) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], tuple]]:
    """The methods of a bucketed gather program: name -> (module, example inputs, dynamic shapes).

    "forward" reads the whole cache (width Lm) and each bucket's forward_<W> the first W positions,
    taking up to W tokens. Every module wraps the same model, so their KV cache buffers have the
    same names, the names by which the methods share one cache.
    """
    methods = {}
    for width in (*check_buckets(buckets, model.args.max_seq_len), model.args.max_seq_len):
        name = "forward" if width == model.args.max_seq_len else bucket_method(width)
        length = Dim("seq_len", min=1, max=width)
        tokens = torch.zeros(1, seq_len, dtype=torch.long)  # (1, L)
        methods[name] = (PrefixProgram(model, width), (tokens, torch.tensor([0])), ({1: length}, None))
    return methods
