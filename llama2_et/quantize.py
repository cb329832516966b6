"""Quantization as a source transformation: the linears (torchao) and the token table, in place.

ExecuTorch keeps its LLM quantization in one module too (examples/models/llama's
source_transformation/quantize.py). export.py calls both functions after `prepare_for_export`:
- `quantize_linears`: 8-bit dynamic activations with int8 (8da8w) or grouped int4 (8da4w) weights,
  which XNNPACK runs;
- `quantize_embedding_table`: a weight-only int8 or int4 token table, read by ExecuTorch's
  quantized_decomposed embedding kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import Transformer

QUANTIZATIONS = ("none", "8da8w", "8da4w")
EMBEDDING_BITS = (4, 8)


def quantize_linears(model: nn.Module, scheme: str, group_size: int = 32) -> int:
    """Quantize the linears in place with torchao (8-bit dynamic activations); return how many.

    8da8w: int8 weights, one scale per output channel. 8da4w: int4 weights in groups of
    group_size inputs; a linear whose input width is not a multiple of group_size stays fp32.
    Each scale is chosen by half-quadratic quantization (HQQ, scale only), as ExecuTorch's own
    export_llm does: it minimizes the weights' rounding error, where a scale from the group's
    largest magnitude lets one outlier coarsen the grid for all the others.
    """
    if scheme == "none":
        return 0
    if scheme not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if scheme == "8da4w" and group_size < 1:
        raise ValueError(f"group_size must be a positive number of inputs, got {group_size}")
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int8 if scheme == "8da8w" else torch.int4,
        weight_granularity=PerAxis(0) if scheme == "8da8w" else PerGroup(group_size),
        intx_choose_qparams_algorithm="hqq_scale_only",
    )

    def chosen(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and (scheme == "8da8w" or module.in_features % group_size == 0)

    count = sum(chosen(m, n) for n, m in model.named_modules())
    if count == 0:
        widths = sorted({m.in_features for m in model.modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"group_size={group_size} divides none of the linears' input widths {widths}: nothing would be "
            "quantized; choose a group size that divides them (e.g. 32)"
        )
    quantize_(model, config, filter_fn=chosen)
    return count


class QuantizedEmbedding(nn.Module):
    """A token table stored as int8 (8-bit) or two int4 per byte (4-bit), one fp32 scale per group.

    Weight-only and symmetric (zero point 0): row t of the table is q[t] * scale[t, group], computed
    by ExecuTorch's kernels quantized_decomposed::embedding_byte / embedding_4bit, the ops
    ExecuTorch's LLM export uses for `quantization.embedding_quantize`. The values come from
    torchao's IntxWeightOnlyConfig; the 4-bit packing is the kernels': q + 8 in a nibble, the
    even column in the high one.
    """

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int):
        super().__init__()
        import executorch.exir  # noqa: F401  (defines the quantized_decomposed embedding ops in torch)
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        vocab_size, dim = weight.shape
        table = nn.Embedding.from_pretrained(weight.detach().clone())
        config = IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group_size)
        )
        quantize_(table, config, filter_fn=lambda module, name: isinstance(module, nn.Embedding))
        q, scales = table.weight.qdata, table.weight.scale  # (V, D) int8 in the bits' range, (V, D / group)
        if bits == 4:
            nibbles = (q + 8).to(torch.uint8).view(vocab_size, dim // 2, 2)
            q = nibbles[..., 0] * 16 + nibbles[..., 1]  # (V, D / 2)
        self.bits, self.group_size = bits, group_size
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.float())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> embeddings (B, L, D), fp32."""
        op = torch.ops.quantized_decomposed
        if self.bits == 8:
            return op.embedding_byte(self.weight, self.scales, None, -128, 127, tokens)
        return op.embedding_4bit(self.weight, self.scales, None, -8, 7, tokens)


def quantize_embedding_table(model: Transformer, bits: int | None, group_size: int | None = None) -> None:
    """Replace the token embedding by a QuantizedEmbedding of `bits` (4 or 8; None: leave it fp32).

    group_size: embedding values per scale, a divisor of the model's dim (None: one scale per row).
    A tied classifier (llama2.c's shared weights) keeps its own fp32 reference to the table, so the
    output head is untouched (or quantized as a linear by `quantize_linears`).
    """
    if bits is None:
        if group_size is not None:
            raise ValueError(
                f"embedding_group_size={group_size} given without quantize_embedding; pass 4 or 8 bits too"
            )
        return
    if bits not in EMBEDDING_BITS:
        raise ValueError(f"quantize_embedding must be 4 or 8 (bits per weight), got {bits!r}")
    dim = model.args.dim
    group = dim if group_size is None else group_size
    if not (isinstance(group, int) and group >= 1 and dim % group == 0):
        raise ValueError(
            f"embedding_group_size={group_size} must be a positive divisor of the model's dim {dim} "
            "(or None: one scale per row)"
        )
    model.tok_embeddings = QuantizedEmbedding(model.tok_embeddings.weight, bits, group)
