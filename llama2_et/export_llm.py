"""ExecuTorch's own LLM export (`export_llm`) and runner (`TextLLMRunner`), driven from Python.

This is what a reader would use without this project: the llama implementation shipped in the
executorch wheel (examples/models/llama), exported by `python -m executorch.extension.llm.export.
export_llm` from a checkpoint in Meta's format, with a KV cache, the custom SDPA op and XNNPACK,
then run by the C++ `TextLLMRunner` through its Python binding. The same runner also runs our
positions-design .pte, which is how we show that program speaks the runner's metadata.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint.meta import save_meta
from .contract import BOS_ID, STOP_IDS
from .model import Transformer
from .runtime import register_llm_custom_ops

EXPORT_LLM = "executorch.extension.llm.export.export_llm"


@dataclass
class ExportLlmResult:
    """What one export_llm run wrote, with which options, in how long."""

    path: Path
    seconds: float  # wall time of the export_llm process (Python start-up included)
    overrides: list[str]  # export_llm's options, as passed on its command line


def save_meta_for_export_llm(model: Transformer, out_dir: Path) -> Path:
    """The model in Meta's format as export_llm reads it: params.json without max_seq_len."""
    meta = save_meta(model, out_dir)
    params_file = meta / "params.json"
    params = json.loads(params_file.read_text())
    params.pop("max_seq_len", None)  # export_llm passes its own max_seq_len: a second one is a TypeError
    params_file.write_text(json.dumps(params))
    return meta


def export_with_export_llm(
    model: Transformer,
    out_path: str | Path,
    max_seq_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_ids: tuple[int, ...] = STOP_IDS,
    xnnpack: bool = True,
    qmode: str | None = None,
    group_size: int | None = None,
    embedding_quantize: str | None = None,
) -> ExportLlmResult:
    """Write `model` as a .pte made by ExecuTorch's export_llm (KV cache, custom SDPA, fp32 unless told).

    The checkpoint goes through Meta's format (consolidated.00.pth + params.json), the input
    export_llm reads. `eos_ids` defaults to llama2.c's stop rule (BOS or EOS ends a story), so
    TextLLMRunner stops where our `generate` stops. qmode, group_size and embedding_quantize are
    export_llm's `quantization.*` options (e.g. "8da4w", 32, "4,32"; see its LlmConfig).
    """
    out_path = Path(out_path).resolve()
    if out_path.suffix != ".pte":
        raise ValueError(f"{out_path}: export_llm's output must be a .pte file")
    max_seq_len = max_seq_len or model.args.max_seq_len
    if not 1 < max_seq_len <= model.args.max_seq_len:
        raise ValueError(
            f"max_seq_len={max_seq_len} must be in 2..{model.args.max_seq_len} (the model's context)"
        )
    quantization = quantization_overrides(qmode, group_size, embedding_quantize)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export_llm_") as work:
        meta = save_meta_for_export_llm(model, Path(work) / "meta")
        params_file = meta / "params.json"
        metadata = json.dumps({"get_bos_id": bos_id, "get_eos_ids": list(eos_ids)})
        options = [
            "base.model_class=llama2",
            "model.use_kv_cache=True",
            "model.use_sdpa_with_kv_cache=True",
            "model.enable_dynamic_shape=True",
            "model.dtype_override=fp32",
            f"backend.xnnpack.enabled={xnnpack}",
            f"export.max_seq_length={max_seq_len}",
            f"export.max_context_length={max_seq_len}",
            *quantization,
        ]
        paths = [
            f"base.checkpoint={meta / 'consolidated.00.pth'}",
            f"base.params={params_file}",
            f"base.metadata='{metadata}'",
            f"export.output_name={out_path}",  # a name ending in .pte is used as the path verbatim
            f"hydra.run.dir={work}/hydra",  # hydra writes its logs there, not into the caller's folder
        ]
        proc = subprocess.run(
            [sys.executable, "-m", EXPORT_LLM, *options, *paths], cwd=work, capture_output=True, text=True
        )
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{EXPORT_LLM} failed (exit {proc.returncode}) writing {out_path}:\n{tail}")
    return ExportLlmResult(out_path, seconds, options)


def quantization_overrides(
    qmode: str | None, group_size: int | None, embedding_quantize: str | None
) -> list[str]:
    """export_llm's quantization.* options, checked here rather than minutes into its run."""
    overrides = []
    if qmode is not None:
        from executorch.extension.llm.export.config.llm_config import QuantizationConfig

        QuantizationConfig(qmode=qmode)  # raises a ValueError listing the modes it knows
        overrides.append(f"quantization.qmode={qmode}")
    if group_size is not None:
        if qmode is None:
            raise ValueError(f"group_size={group_size} given without a qmode (e.g. qmode='8da4w')")
        if group_size < 0:
            raise ValueError(f"group_size must be >= 0 (0: one group per output channel), got {group_size}")
        overrides.append(f"quantization.group_size={group_size}")
    if embedding_quantize is not None:
        bits, _, group = embedding_quantize.partition(",")
        if bits not in ("2", "4", "8") or not (group.isdigit() or group in ("none", "None")):
            raise ValueError(
                f"embedding_quantize={embedding_quantize!r} must be '<bits>,<group size>' with bits 2, 4 "
                "or 8 and a group size (0 or none: one scale per row), e.g. '4,32'"
            )
        overrides.append(f"quantization.embedding_quantize='{embedding_quantize}'")
    return overrides


@dataclass
class RunnerOutput:
    """What one TextLLMRunner.generate call produced."""

    text: str  # the generated text, prompt excluded
    pieces: list[str]  # one decoded piece per generated token
    piece_times: list[float]  # seconds from the call to each piece's callback
    stats: dict = field(default_factory=dict)  # the runner's own Stats (millisecond resolution)


class TextRunner:
    """A .pte in ExecuTorch's C++ TextLLMRunner (our positions-design program or export_llm's)."""

    def __init__(self, pte_path: str | Path, tokenizer_path: str | Path):
        pte_path, tokenizer_path = Path(pte_path), Path(tokenizer_path)
        if not pte_path.is_file():
            raise FileNotFoundError(f"program not found: {pte_path}")
        if not tokenizer_path.is_file():
            raise FileNotFoundError(f"tokenizer not found: {tokenizer_path}")
        if tokenizer_path.suffix != ".model":
            raise ValueError(
                f"{tokenizer_path}: TextLLMRunner reads a sentencepiece .model (e.g. tok512.model), "
                "not llama2.c's tokenizer.bin"
            )
        register_llm_custom_ops(pte_path)
        from executorch.extension.llm.runner import TextLLMRunner

        self.pte_path = pte_path
        self.runner = TextLLMRunner(str(pte_path), str(tokenizer_path))

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0) -> RunnerOutput:
        """Prefill the prompt (with BOS) and generate up to max_new_tokens; temperature 0 is greedy."""
        from executorch.extension.llm.runner import GenerationConfig

        config = GenerationConfig(
            echo=False, max_new_tokens=max_new_tokens, temperature=temperature, num_bos=1, num_eos=0
        )
        pieces: list[str] = []
        piece_times: list[float] = []
        stats: list[str] = []

        def on_piece(piece: str) -> None:
            piece_times.append(time.perf_counter() - start)
            pieces.append(piece)

        self.runner.reset()  # the runner keeps its position across calls (multi-turn chat)
        start = time.perf_counter()
        try:
            self.runner.generate(prompt, config, on_piece, lambda s: stats.append(s.to_json_string()))
        except RuntimeError as exc:
            raise RuntimeError(
                f"TextLLMRunner failed on {self.pte_path}: {exc} (see its log above)"
            ) from None
        return RunnerOutput("".join(pieces), pieces, piece_times, json.loads(stats[0]) if stats else {})
