"""Eager Transformer -> torch.export -> edge dialect -> a backend's kernels -> .pte.

`export_pte` is the whole pipeline in one function:
1. `prepare_for_export`: a batch-1 copy of the model with its KV cache at the export's context,
   and the backend's source transformations applied (backends.py, transforms.py);
2. optional quantization of the linears and of the token embedding (quantize.py);
3. `trace`: torch.export of a program design (designs.py; "gather" by default) with a `Dim` for
   the token count, so one program serves prefill and decode, the KV cache held as mutable
   buffers, and the buffers it never reads dropped (`drop_unread_buffers`);
4. `lower`: `to_edge_transform_and_lower` with the backend's partitioners and the metadata methods
   of the contract (contract.py) that ExecuTorch's TextLLMRunner and our runtimes read;
5. `to_program`: `to_executorch` (memory planning, the caches' zeros), then a sealed .pte.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import contract, designs, integrity
from .backends import backend as backend_entry
from .designs import program_and_inputs
from .files import atomic_write_bytes, check_output_path
from .model import Transformer
from .quantize import quantize_embedding_table, quantize_linears
from .transforms import FilledCacheAttention


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
    quantize_embedding: int | None = None  # bits of the token table (None: fp32)
    embedding_group_size: int | None = None  # table values per scale (None: one per row)

    def summary(self) -> str:
        """One line per fact, for the command line."""
        ops = ", ".join(f"{name} x{n}" for name, n in sorted(self.portable_ops.items()))
        return "\n".join(
            [
                f"wrote {self.path} ({self.pte_bytes / 2**20:.2f} MiB) in {self.seconds:.1f} s",
                f"design {self.design}, backend {self.backend}, quantize {self.quantize}, "
                f"max_seq_len {self.max_seq_len}, quantized linears {self.quantized_linears}, "
                f"embedding {self._embedding()}",
                f"delegated: {self.delegated_nodes} ops in {self.delegate_calls} calls; "
                f"portable: {self.portable_nodes} ops ({ops})",
            ]
        )

    def _embedding(self) -> str:
        if self.quantize_embedding is None:
            return "fp32"
        group = "per row" if self.embedding_group_size is None else f"groups of {self.embedding_group_size}"
        return f"{self.quantize_embedding}-bit ({group})"


def prepare_for_export(
    model: Transformer, backend: str = "xnnpack", max_seq_len: int | None = None
) -> Transformer:
    """A copy of model for export: context max_seq_len, batch-1 KV cache, the backend's transformations."""
    context = model.args.max_seq_len if max_seq_len is None else max_seq_len
    if not 1 <= context <= model.args.max_seq_len:
        raise ValueError(
            f"max_seq_len={context} must be in 1..{model.args.max_seq_len} (the model's context)"
        )
    entry = backend_entry(backend)
    prepared = Transformer(model.args.replace(max_seq_len=context))
    prepared.load_state_dict(model.state_dict())
    prepared.eval().setup_kv_cache()
    for transform in entry.transforms:
        transform(prepared)
    return prepared


def _portable_ops(graph_module: torch.fx.GraphModule) -> Counter:
    """Edge ops outside any delegate (getitem of a delegate's outputs is bookkeeping, not an op).

    An op that mutates an argument (llama2_et::write_cache) is wrapped in the Edge graph by an
    auto_functionalized node, which `to_executorch` unwraps: it is counted by the op it wraps.
    """
    ops = Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target.__name__ in ("getitem", "executorch_call_delegate"):
            continue
        target = node.args[0] if node.target in _FUNCTIONALIZED else node.target
        ops[str(getattr(target, "_name", target.__name__)).removeprefix("aten::")] += 1
    return ops


_FUNCTIONALIZED = (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2)


def _initialize_buffers(program: torch.export.ExportedProgram, patterns: list[str]) -> None:
    """Mark the buffers of one method whose names contain a pattern to carry their initial content.

    What `InitializedMutableBufferPass` does for every method of a program, for this one alone.
    """
    for node in program.graph.nodes:
        if node.op == "placeholder" and any(pattern in node.name for pattern in patterns):
            node.meta["et_init_buffer"] = True


def drop_unread_buffers(exported: torch.export.ExportedProgram) -> list[str]:
    """Remove the buffers the graph never reads (the preproc design's program holds the model's own
    RoPE tables and mask but is fed slices instead), so the file does not store them; their names."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    unread = [
        spec
        for spec in exported.graph_signature.input_specs
        if spec.kind == InputKind.BUFFER and not placeholders[spec.arg.name].users
    ]
    for spec in unread:
        exported.graph_signature.input_specs.remove(spec)
        (exported.state_dict if spec.persistent else exported.constants).pop(spec.target)
        exported.graph.erase_node(placeholders[spec.arg.name])
    exported.graph_module.recompile()
    return [spec.target for spec in unread]


def trace(
    prepared: Transformer, design: str, buckets: tuple[int, ...] = ()
) -> dict[str, torch.export.ExportedProgram]:
    """torch.export of a design's program by method name: forward, and a bucketed program's forward_<W>.

    Each without the buffers its graph never reads (`drop_unread_buffers`).
    """
    if isinstance(prepared.layers[0].attention, FilledCacheAttention) and (design != "gather" or buckets):
        raise ValueError(
            "backend xnnpack-filled reads the filled cache positions in the gather design's forward: "
            f"export it with design='gather' and no buckets (got design={design!r}, buckets={buckets})"
        )
    if buckets:
        methods = designs.bucket_programs(prepared, buckets)
    else:
        methods = {"forward": program_and_inputs(prepared, design)}
    with torch.no_grad():  # the KV cache is written in place, not a tensor to differentiate
        exported = {
            name: torch.export.export(program, inputs, dynamic_shapes=shapes, strict=False)
            for name, (program, inputs, shapes) in methods.items()
        }
    for method in exported.values():
        drop_unread_buffers(method)
    return exported


def lower(exported: dict[str, torch.export.ExportedProgram], backend: str, metadata: dict):
    """ExportedPrograms by method name -> the edge dialect, the backend's delegates in place.

    Returns the EdgeProgramManager. metadata: the constant methods the program carries
    (contract.metadata).
    """
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    entry = backend_entry(backend)
    return to_edge_transform_and_lower(
        exported,
        partitioner=entry.partitioners() or None,
        constant_methods=metadata,
        compile_config=EdgeCompileConfig(preserve_ops=list(entry.preserve_ops)),
    )


def to_program(edge, shared_cache: bool = False):
    """The edge program -> an ExecuTorch program, planned and ready to serialize (its `.buffer`).

    to_executorch rewrites the edge graph in place (out variants, allocations): read what was
    delegated before calling it. shared_cache: the methods of a bucketed program share forward's
    KV cache.
    """
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    # A mutated buffer's initial content is unspecified unless the program carries it: serialize
    # the caches' zeros, so the first call reads zeros (not arena garbage, which 0 * NaN would leak)
    zeroed_cache = ["k_cache", "v_cache"]
    if not shared_cache:
        config = ExecutorchBackendConfig(
            passes=[InitializedMutableBufferPass(zeroed_cache)], run_reinplace_pass=True
        )
        return edge.to_executorch(config)
    # one cache for every method: planned once (memory id 2) at the same offsets in each, and
    # its zeros serialized with forward's alone (each method's copy would add the cache's size)
    _initialize_buffers(edge.exported_program("forward"), zeroed_cache)
    # (unnamed: the emitter stores the zeros of same-sized buffers once only for unnamed ones)
    planning = MemoryPlanningPass(share_mutable_buffers=True)
    return edge.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True, memory_planning_pass=planning))


def export_pte(
    model: Transformer,
    out_path: str | Path,
    design: str = designs.DEFAULT_DESIGN,
    backend: str = "xnnpack",
    quantize_scheme: str = "none",
    max_seq_len: int | None = None,
    group_size: int = 32,
    bos_id: int = contract.BOS_ID,
    eos_ids: tuple[int, ...] = contract.STOP_IDS,
    quantize_embedding: int | None = None,
    embedding_group_size: int | None = None,
    buckets: tuple[int, ...] = (),
) -> ExportReport:
    """Export model to a .pte file and report what was delegated, the size and the time taken.

    quantize_embedding: 4 or 8 to store the token table weight-only quantized (see
    `quantize.quantize_embedding_table`), in groups of embedding_group_size values (None: one scale per row).
    buckets: widths W < max_seq_len of the gather design's narrower methods forward_<W>, which attend
    the first W cache positions and share forward's KV cache (`designs.bucket_programs`); a runtime
    calls the narrowest that covers its positions, so decode reads no more than it must.
    """
    from executorch.devtools.backend_debug import get_delegation_info

    backend_entry(backend)  # an unknown backend or design is refused before the export runs
    designs.check_design(design)
    if buckets and design != "gather":
        raise ValueError(f"buckets are methods of the gather design, not of {design!r}")
    out_path = check_output_path(out_path, ".pte")  # also before the export runs
    started = time.perf_counter()
    prepared = prepare_for_export(model, backend, max_seq_len)
    quantize_embedding_table(prepared, quantize_embedding, embedding_group_size)
    quantized = quantize_linears(prepared, quantize_scheme, group_size)
    edge = lower(trace(prepared, design, buckets), backend, contract.metadata(prepared.args, bos_id, eos_ids))
    graph = edge.exported_program("forward").graph_module
    info = get_delegation_info(graph)
    portable = _portable_ops(graph)
    et_program = to_program(edge, shared_cache=bool(buckets))
    # sealed with its content hash (integrity.py); a failed write leaves the previous file as it was
    atomic_write_bytes(out_path, integrity.sealed(et_program.buffer))
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
        quantize_embedding=quantize_embedding,
        embedding_group_size=embedding_group_size,
    )
