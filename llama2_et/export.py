"""Eager Transformer -> torch.export -> edge dialect -> XNNPACK or portable kernels -> .pte.

Two program designs (see preproc.py), both with one `Dim` for the token count L (1..max_seq_len) so
one program serves prefill and decode, and the KV cache held as mutable buffers:
- "positions": forward(tokens (1, L) int64, input_pos (1,) int64) -> logits (1, V). The RoPE
  tables and the mask are sliced inside the graph; this is what ExecuTorch's TextLLMRunner calls.
- "preproc": forward(tokens (1, L), cos (L, Dh/2), sin (L, Dh/2), mask (L, Lm), input_pos (L,))
  -> logits (1, V). The runtime slices the tables itself (`Preproc.window`).
Both carry constant methods (get_max_seq_len, get_vocab_size, get_eos_ids, ...), the metadata
TextLLMRunner reads, plus the shape and RoPE numbers our runtimes need.

Before export, source transformations swap two modules for equivalents built only from ops that
XNNPACK delegates (`ExportRMSNorm`, `ExportAttention`), so each layer runs as one delegate call
between its two cache writes instead of dozens of small portable kernels.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from .config import ModelArgs
from .model import Attention, RMSNorm, Transformer
from .preproc import Preproc, WithPositions

DESIGNS = ("positions", "preproc")
BACKENDS = ("xnnpack", "portable")
QUANTIZATIONS = ("none", "8da8w", "8da4w")


def pair_swap_matrix(head_dim: int) -> torch.Tensor:
    """W (Dh, Dh) with F.linear(x, W) = (-x[1], x[0], -x[3], x[2], ...): RoPE's rotate-by-90° of each pair."""
    w = torch.zeros(head_dim, head_dim)
    even = torch.arange(0, head_dim, 2)
    w[even, even + 1] = -1.0
    w[even + 1, even] = 1.0
    return w


def pair_expansion(n_heads: int, head_dim: int) -> torch.Tensor:
    """E (H*Dh, Dh/2) with F.linear(t, E)[:, h*Dh + 2i + j] = t[:, i]: a table per pair, for every head."""
    column = torch.arange(n_heads * head_dim)
    e = torch.zeros(n_heads * head_dim, head_dim // 2)
    e[column, (column % head_dim) // 2] = 1.0
    return e


class ExportRMSNorm(nn.Module):
    """RMSNorm with its mean as a matmul: XNNPACK delegates linear, not a mean over the last dim."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        dim = norm.weight.shape[0]
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = F.linear(x * x, self.average)  # (B, L, 1)
        return x * torch.rsqrt(mean_square + self.eps) * self.weight


class ExportAttention(nn.Module):
    """Attention (batch 1, with cache) in ops XNNPACK delegates: same math as `Attention`.

    - RoPE as multiply-adds: rope(x) = x * cos + swap(x) * sin, where swap is a fixed (Dh, Dh)
      linear and cos/sin are widened from (L, Dh/2) to every head's columns by a fixed linear.
    - The 1/sqrt(Dh) scale is folded into wq.
    - Grouped-query attention without repeat_interleave: the query heads that share a key/value
      head are stacked as rows of one matmul against that head's cache.
    - Keys are cached transposed (Nkv, Dh, Lm) and values as (Nkv, Lm, Dh), so both matmuls read
      the cache as their right-hand side and stay efficient for a single decoded token.
    - Views keep at most one -1 and no symbolic size, the form XNNPACK's reshape accepts.
    The cache is written with index_copy_ (a portable kernel, in place): the only break per layer.
    """

    def __init__(self, attn: Attention, max_seq_len: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.n_rep = self.n_heads // self.n_kv_heads
        self.wq = nn.Linear(attn.wq.in_features, attn.wq.out_features, bias=False)
        self.wq.weight = nn.Parameter(attn.wq.weight.detach() / math.sqrt(self.head_dim), requires_grad=False)
        self.wk, self.wv, self.wo = attn.wk, attn.wv, attn.wo
        self.register_buffer("pair_swap", pair_swap_matrix(self.head_dim), persistent=False)
        self.register_buffer("expand_q", pair_expansion(self.n_heads, self.head_dim), persistent=False)
        self.register_buffer("expand_k", pair_expansion(self.n_kv_heads, self.head_dim), persistent=False)
        nkv, dh = self.n_kv_heads, self.head_dim
        self.register_buffer("k_cache", torch.zeros(nkv, dh, max_seq_len), persistent=False)  # (Nkv, Dh, Lm)
        self.register_buffer("v_cache", torch.zeros(nkv, max_seq_len, dh), persistent=False)  # (Nkv, Lm, Dh)

    def rope(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, expand: torch.Tensor
    ) -> torch.Tensor:
        """Rotate the pairs of x (1, L, H*Dh) by cos/sin (L, Dh/2)."""
        swapped = F.linear(x.view(-1, self.head_dim), self.pair_swap).view(1, -1, x.shape[-1])
        return x * F.linear(cos, expand) + swapped * F.linear(sin, expand)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        nh, nkv, dh, rep = self.n_heads, self.n_kv_heads, self.head_dim, self.n_rep
        q = self.rope(self.wq(x), cos, sin, self.expand_q)  # (1, L, Nh*Dh), already scaled
        k = self.rope(self.wk(x), cos, sin, self.expand_k)  # (1, L, Nkv*Dh)
        v = self.wv(x)
        self.k_cache.index_copy_(2, input_pos, k.view(-1, nkv, dh).permute(1, 2, 0))  # write (Nkv, Dh, L)
        self.v_cache.index_copy_(1, input_pos, v.view(-1, nkv, dh).transpose(0, 1))  # write (Nkv, L, Dh)
        max_seq_len = self.v_cache.shape[1]
        q = q.view(-1, nkv, rep, dh).permute(1, 2, 0, 3).contiguous().view(nkv, -1, dh)  # (Nkv, rep*L, Dh)
        scores = torch.bmm(q, self.k_cache).view(nkv, rep, -1, max_seq_len) + mask  # (Nkv, rep, L, Lm)
        probs = torch.softmax(scores, dim=-1).view(nkv, -1, max_seq_len)  # (Nkv, rep*L, Lm)
        out = torch.bmm(probs, self.v_cache)  # (Nkv, rep*L, Dh)
        out = out.view(nkv, rep, -1, dh).permute(2, 0, 1, 3).contiguous().view(1, -1, nh * dh)  # (1, L, D)
        return self.wo(out)


def prepare_for_export(model: Transformer, max_seq_len: int | None = None) -> Transformer:
    """A copy of model for export: context max_seq_len, batch 1, export-friendly modules swapped in."""
    args = model.args.replace(max_seq_len=max_seq_len or model.args.max_seq_len)
    if not 1 <= args.max_seq_len <= model.args.max_seq_len:
        raise ValueError(
            f"max_seq_len={args.max_seq_len} must be in 1..{model.args.max_seq_len} (the model's context)"
        )
    prepared = Transformer(args)
    prepared.load_state_dict(model.state_dict())
    prepared.eval()
    for layer in prepared.layers:
        layer.attention = ExportAttention(layer.attention, args.max_seq_len)
        layer.attention_norm = ExportRMSNorm(layer.attention_norm)
        layer.ffn_norm = ExportRMSNorm(layer.ffn_norm)
    prepared.norm = ExportRMSNorm(prepared.norm)
    return prepared


class PositionsProgram(WithPositions):
    """WithPositions with the tables gathered by position instead of narrowed at a start.

    `narrow` at a start read from a tensor leaves a size XNNPACK cannot prove non-empty (an
    unbacked symbol), so every op fed by the sliced tables falls back to portable kernels.
    index_select at positions start..start+L-1 gives the same rows with the size L of the tokens.
    """

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], dtype=torch.long) + input_pos  # (L,)
        cos = self.preproc.cos.index_select(0, positions)  # (L, Dh/2)
        sin = self.preproc.sin.index_select(0, positions)
        mask = self.preproc.mask.index_select(0, positions)  # (L, Lm)
        return self.model.last_logits(tokens, cos, sin, mask, positions)


class PreprocProgram(nn.Module):
    """The preproc design: forward(tokens, cos, sin, mask, input_pos) -> last logits (1, V)."""

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
        return self.model.last_logits(tokens, cos, sin, mask, input_pos)


def program_and_inputs(
    model: Transformer, design: str, seq_len: int = 2
) -> tuple[nn.Module, tuple[torch.Tensor, ...], tuple]:
    """The module to export for a design, example inputs of seq_len tokens, and their dynamic shapes."""
    args = model.args
    tokens = torch.zeros(1, seq_len, dtype=torch.long)
    length = Dim("seq_len", min=1, max=args.max_seq_len)
    if design == "positions":
        return PositionsProgram(model), (tokens, torch.tensor([0])), ({1: length}, None)
    if design == "preproc":
        inputs = (tokens, *Preproc(args).window(0, seq_len))
        return (
            PreprocProgram(model),
            inputs,
            ({1: length}, {0: length}, {0: length}, {0: length}, {0: length}),
        )
    raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")


def metadata(args: ModelArgs, bos_id: int = 1, eos_ids: tuple[int, ...] = (1, 2)) -> dict:
    """Constant methods: what TextLLMRunner reads, and the shapes our runtimes rebuild Preproc from."""
    return {
        "get_max_seq_len": args.max_seq_len,
        "get_max_context_len": args.max_seq_len,
        "get_vocab_size": args.vocab_size,
        "get_bos_id": bos_id,
        "get_eos_ids": list(eos_ids),
        "get_n_layers": args.n_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
        "get_dim": args.dim,
        "get_n_heads": args.n_heads,
        "get_n_kv_heads": args.kv_heads,
        "get_head_dim": args.head_dim,
        "get_rope_theta": float(args.rope_theta),
    }


def quantize(model: nn.Module, scheme: str, group_size: int = 32) -> int:
    """Quantize the linears in place with torchao (8-bit dynamic activations); return how many.

    8da8w: int8 weights, one scale per output channel. 8da4w: int4 weights in groups of
    group_size inputs; a linear whose input width is not a multiple of group_size stays fp32.
    """
    if scheme == "none":
        return 0
    if scheme not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of {', '.join(QUANTIZATIONS)}")
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da8w":
        config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    else:
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)
        )

    def chosen(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and (scheme == "8da8w" or module.in_features % group_size == 0)

    count = sum(chosen(m, n) for n, m in model.named_modules())
    quantize_(model, config, filter_fn=chosen)
    return count


@dataclass
class ExportReport:
    """What one export produced and how: the numbers a reader compares between backends."""

    path: Path
    design: str
    backend: str
    quantize: str
    max_seq_len: int
    seconds: float  # torch.export + lowering + serialization
    pte_bytes: int
    delegate_calls: int  # delegated subgraphs the program calls per forward
    delegated_nodes: int  # edge ops inside those subgraphs
    portable_nodes: int  # edge ops left to ExecuTorch's portable kernels
    portable_ops: dict[str, int] = field(default_factory=dict)  # op name -> count, for the portable ones
    quantized_linears: int = 0

    def summary(self) -> str:
        """One line per fact, for the command line."""
        ops = ", ".join(f"{name} x{n}" for name, n in sorted(self.portable_ops.items()))
        return "\n".join(
            [
                f"wrote {self.path} ({self.pte_bytes / 2**20:.2f} MiB) in {self.seconds:.1f} s",
                f"design {self.design}, backend {self.backend}, quantize {self.quantize}, "
                f"max_seq_len {self.max_seq_len}, quantized linears {self.quantized_linears}",
                f"delegated: {self.delegated_nodes} ops in {self.delegate_calls} calls; "
                f"portable: {self.portable_nodes} ops ({ops})",
            ]
        )


def _portable_ops(graph_module: torch.fx.GraphModule) -> Counter:
    """Edge ops outside any delegate (getitem of a delegate's outputs is bookkeeping, not an op)."""
    ops = Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target.__name__ in ("getitem", "executorch_call_delegate"):
            continue
        ops[str(getattr(node.target, "_name", node.target.__name__)).removeprefix("aten::")] += 1
    return ops


def export_pte(
    model: Transformer,
    out_path: str | Path,
    design: str = "positions",
    backend: str = "xnnpack",
    quantize_scheme: str = "none",
    max_seq_len: int | None = None,
    group_size: int = 32,
    bos_id: int = 1,
    eos_ids: tuple[int, ...] = (1, 2),
) -> ExportReport:
    """Export model to a .pte file and report what was delegated, the size and the time taken."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    out_path = Path(out_path)
    if out_path.suffix != ".pte":
        raise ValueError(f"{out_path}: the output file must end in .pte")
    started = time.perf_counter()
    prepared = prepare_for_export(model, max_seq_len)
    quantized = quantize(prepared, quantize_scheme, group_size)
    program, inputs, dynamic_shapes = program_and_inputs(prepared, design)
    with torch.no_grad():
        exported = torch.export.export(program, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    edge = to_edge_transform_and_lower(
        exported,
        partitioner=[XnnpackPartitioner()] if backend == "xnnpack" else None,
        constant_methods=metadata(prepared.args, bos_id, eos_ids),
        # portable: keep linear whole (its kernel reads the weight as stored); decomposed, it
        # becomes permute_copy + mm and copies every weight on every call
        compile_config=EdgeCompileConfig(preserve_ops=[torch.ops.aten.linear.default]),
    )
    graph = edge.exported_program().graph_module
    info = get_delegation_info(graph)
    portable = _portable_ops(graph)
    et_program = edge.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(et_program.buffer)
    return ExportReport(
        path=out_path,
        design=design,
        backend=backend,
        quantize=quantize_scheme,
        max_seq_len=prepared.args.max_seq_len,
        seconds=time.perf_counter() - started,
        pte_bytes=out_path.stat().st_size,
        delegate_calls=info.num_delegated_subgraphs,
        delegated_nodes=info.num_delegated_nodes,
        portable_nodes=sum(portable.values()),
        portable_ops=dict(portable),
        quantized_linears=quantized,
    )
