"""Measured comparisons: speed, memory and file size of every runtime, against ExecuTorch's own LLM export.

For each model (a stories15M-shaped model with random weights, and the real stories260K) the bench
exports our programs and the peer's (export_llm's .pte, run by ExecuTorch's TextLLMRunner), then
measures each runtime in its own subprocess, so that peak RSS belongs to that runtime alone:
a warm-up run, then the median of a few runs of a fixed-length prefill and N greedy tokens
(the first from the prefill, N-1 decode steps). Every row also says whether its greedy tokens equal
fp32 eager's; our .pte rows report the largest logit error against fp32 eager, teacher-forced on
eager's tokens, so what quantization costs is shown next to what it buys.

The worker half of this module runs as `python -m llama2_et.bench SPEC.json RESULT.json`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets
from .checkpoint import load_checkpoint, save_meta
from .config import preset
from .model import Transformer
from .tokenizer import Tokenizer

MODELS = ("stories15M-shape", "stories260K")
GOAL_DECODE, GOAL_PREFILL = 1.1, 1.0  # ours / peer on the stories15M shape


@dataclass(frozen=True)
class Row:
    """One runtime to measure: how it runs (kind) and which program file it runs."""

    key: str
    label: str
    kind: str  # eager-nocache | eager | pte | text-runner | cpp
    program: str | None = None  # a key of the programs built for the model


ROWS = (
    Row("eager-nocache", "eager PyTorch, no cache", "eager-nocache"),
    Row("eager", "eager PyTorch, KV cache", "eager"),
    Row("pte-portable", "our .pte portable (preproc, Python runtime)", "pte", "portable"),
    Row("pte-xnnpack", "our .pte XNNPACK fp32 (preproc, Python runtime)", "pte", "xnnpack"),
    Row("pte-8da8w", "our .pte XNNPACK 8da8w (preproc, Python runtime)", "pte", "8da8w"),
    Row("pte-8da4w", "our .pte XNNPACK 8da4w (preproc, Python runtime)", "pte", "8da4w"),
    Row("cpp", "our C++ runner (positions .pte, XNNPACK fp32)", "cpp", "positions"),
    Row("runner-ours", "TextLLMRunner (our positions .pte, XNNPACK fp32)", "text-runner", "positions"),
    Row("peer", "peer: TextLLMRunner (export_llm .pte, XNNPACK fp32)", "text-runner", "peer"),
)
ROW_KEYS = tuple(r.key for r in ROWS)
KEY_PAIR = ("runner-ours", "peer")  # same runner, so only the programs differ: measured interleaved


@dataclass
class BenchModel:
    """A model to bench with its tokenizer and fixed prompt."""

    name: str
    model: Transformer
    tokenizer: Tokenizer
    prompt: str
    prompt_ids: list[int]


def build_model(name: str, prompt_tokens: int) -> BenchModel:
    """The stories15M shape with random weights (seed 0) or the real stories260K, and a prompt of <= prompt_tokens."""
    if name == "stories15M-shape":
        torch.manual_seed(0)
        model = Transformer(preset("stories15M"))
        tokenizer = Tokenizer(assets.resolve_tokenizer("llama2"))
    elif name == "stories260K":
        model = load_checkpoint(assets.resolve_checkpoint("stories260K"))
        tokenizer = Tokenizer(assets.resolve_tokenizer("stories260K"))
    else:
        raise ValueError(f"unknown bench model {name!r}; choose from {', '.join(MODELS)}")
    prompt, ids = fixed_prompt(tokenizer, prompt_tokens)
    return BenchModel(name, model.eval(), tokenizer, prompt, ids)


STORY = (
    "Once upon a time, there was a little girl named Lily. She lived in a small house near a big forest "
    "with her mom, her dad and her dog Max. Every morning Lily and Max went for a walk under the tall "
    "trees. They looked for red leaves, round stones and little birds. One day, Lily found a shiny key "
    "under an old log. She did not know what it could open, so she put it in her pocket and ran home to "
    "show her mom. Her mom smiled and said they would look for the lock together after lunch."
)


def fixed_prompt(tokenizer: Tokenizer, max_tokens: int) -> tuple[str, list[int]]:
    """The longest word prefix of STORY whose ids (BOS first) fit max_tokens.

    Text, not ids, because the runners take text: a whole-word prefix re-encodes to the same ids.
    """
    words = STORY.split(" ")
    prompt, ids = "", []
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        text_ids = tokenizer.encode(text, bos=True)
        if len(text_ids) > max_tokens:
            break
        prompt, ids = text, text_ids
    if not prompt:
        raise ValueError(f"prompt_tokens={max_tokens} leaves no room for a word after BOS")
    return prompt, ids


@torch.no_grad()
def eager_reference(model: Transformer, prompt_ids: list[int], new_tokens: int) -> dict:
    """fp32 eager greedy: the new tokens and the logits that chose each, (new_tokens, V)."""
    from .generate import EagerDecoder

    decoder = EagerDecoder(model)
    decoder.reset()
    logits = [decoder.step(prompt_ids, 0)]
    tokens = [int(logits[-1].argmax())]
    for pos in range(len(prompt_ids), len(prompt_ids) + new_tokens - 1):
        logits.append(decoder.step([tokens[-1]], pos))
        tokens.append(int(logits[-1].argmax()))
    return {"tokens": tokens, "logits": torch.stack(logits)}  # logits (N, V)


def export_programs(
    bm: BenchModel, work: Path, keys: set[str], progress: Callable, reuse: bool = False
) -> dict[str, dict]:
    """Export the programs the rows need: {key: {"path", "bytes", "export_s"}}; reuse existing files if asked."""
    from .peer import export_peer

    def ours(**options) -> Callable[[Path], object]:
        def build(path: Path) -> object:
            from .export import export_pte

            return export_pte(bm.model, path, **options)

        return build

    builders = {
        "portable": ours(design="preproc", backend="portable"),
        "xnnpack": ours(design="preproc", backend="xnnpack"),
        "8da8w": ours(design="preproc", backend="xnnpack", quantize_scheme="8da8w"),
        "8da4w": ours(design="preproc", backend="xnnpack", quantize_scheme="8da4w"),
        "positions": ours(design="positions", backend="xnnpack"),
        "peer": lambda path: export_peer(bm.model, path),
    }
    programs = {}
    for key in progress([k for k in builders if k in keys], desc=f"{bm.name}: export", unit="pte"):
        path = work / f"{key}.pte"
        reused = reuse and path.is_file()
        start = time.perf_counter()
        report = None if reused else builders[key](path)
        export_s = None if reused else time.perf_counter() - start
        programs[key] = {"path": str(path), "bytes": path.stat().st_size, "export_s": export_s}
        if hasattr(report, "delegate_calls"):  # our export reports what it delegated
            programs[key]["delegation"] = {
                name: getattr(report, name)
                for name in ("delegate_calls", "delegated_nodes", "portable_nodes", "portable_ops")
            }
    return programs


def measure(spec: dict, work: Path) -> dict:
    """Run one measurement in a fresh Python process (the worker below) and return its result."""
    spec_path = work / f"spec_{spec['row']}.json"
    result_path = work / f"result_{spec['row']}.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "llama2_et.bench", str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"measuring {spec['row']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


def bench_model(
    bm: BenchModel,
    work: Path,
    rows: list[Row],
    new_tokens: int,
    repeats: int,
    rounds: int,
    progress: Callable,
    reuse: bool = False,
    threads: int = 0,
) -> dict:
    """Export, measure every row in its own process, then ours vs the peer alternating for `rounds` rounds."""
    work.mkdir(parents=True, exist_ok=True)
    ref_path = work / "reference.pt"
    torch.save(eager_reference(bm.model, bm.prompt_ids, new_tokens), ref_path)
    meta_dir = save_meta(bm.model, work / "meta")
    programs = export_programs(bm, work, {r.program for r in rows if r.program}, progress, reuse)
    cpp_binary = tokenizer_bin = None
    if any(r.kind == "cpp" for r in rows):
        from .cpp import build_runner
        from .tokenizer import export_llama2c

        cpp_binary = str(build_runner())
        tokenizer_bin = str(export_llama2c(bm.tokenizer.path, work / "tokenizer.bin"))
    base = {
        "checkpoint": str(meta_dir),
        "tokenizer": str(bm.tokenizer.path),
        "tokenizer_bin": tokenizer_bin,
        "cpp_binary": cpp_binary,
        "prompt": bm.prompt,
        "prompt_ids": bm.prompt_ids,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "reference": str(ref_path),
        "threads": threads or torch.get_num_threads(),
    }
    runs: dict[str, list[dict]] = {}
    for row in progress(rows, desc=f"{bm.name}: measure", unit="row"):
        program = programs.get(row.program, {})
        spec = {**base, "row": row.key, "kind": row.kind, "program": program.get("path")}
        runs.setdefault(row.key, []).append(measure(spec, work))
    results = [summarize(row, runs[row.key], programs.get(row.program)) for row in rows]
    add_ratios(results)
    paired = {}
    if all(key in runs for key in KEY_PAIR):  # one process alternating both: load drifts cancel in each ratio
        pair_paths = [programs[row.program]["path"] for key in KEY_PAIR for row in rows if row.key == key]
        spec = {**base, "row": "pair", "kind": "pair", "programs": pair_paths, "rounds": rounds}
        with progress(total=1, desc=f"{bm.name}: ours vs peer, {rounds} interleaved rounds") as bar:
            pair = measure(spec, work)
            bar.update()
        for phase in ("prefill", "decode"):
            ratios = [
                o / p for o, p in zip(pair["ours"][f"{phase}_tps"], pair["peer"][f"{phase}_tps"], strict=True)
            ]
            paired[phase] = {"per_round": ratios, "median": statistics.median(ratios)}
    profiles = {}
    if {"positions", "peer"} <= set(programs):  # the key pair: where a decode step's time goes
        set_threads(base["threads"])
        for row in (r for r in rows if r.key in KEY_PAIR):
            profiles[row.label] = profile_decode(programs[row.program]["path"], bm.prompt_ids)
    return {
        "prompt_tokens": len(bm.prompt_ids),
        "new_tokens": new_tokens,
        "params": bm.model.args.to_dict(),
        "rows": results,
        "paired_ratios": paired,
        "profile": profiles,
    }


def summarize(row: Row, runs: list[dict], program: dict | None) -> dict:
    """One table row from one or more measurement processes (medians over all their repetitions)."""
    prefill = [x for run in runs for x in run["prefill_tps"]]
    decode = [x for run in runs for x in run["decode_tps"]]
    out = {
        "key": row.key,
        "label": row.label,
        "prefill_tps": statistics.median(prefill),
        "decode_tps": statistics.median(decode),
        "prefill_tps_all": prefill,
        "decode_tps_all": decode,
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "rss_increase_mib": max(run["rss_increase_mib"] for run in runs),
        "greedy_match": runs[0]["greedy_match"],
        "generated_tokens": runs[0]["generated_tokens"],
        "processes": len(runs),
    }
    for key in ("teacher_forced_agreement", "max_logit_error"):
        if key in runs[0]:
            out[key] = runs[0][key]
    if program:
        out.update(file_bytes=program["bytes"], export_s=program["export_s"], program=program["path"])
        if "delegation" in program:
            out["delegation"] = program["delegation"]
    return out


def add_ratios(results: list[dict]) -> None:
    """Each row's prefill/decode speed, peak RSS and file size as a multiple of the peer's."""
    peer = next((r for r in results if r["key"] == "peer"), None)
    if peer is None:
        return
    for r in results:
        r["prefill_vs_peer"] = r["prefill_tps"] / peer["prefill_tps"]
        r["decode_vs_peer"] = r["decode_tps"] / peer["decode_tps"]
        r["rss_increase_vs_peer"] = r["rss_increase_mib"] / peer["rss_increase_mib"]
        if "file_bytes" in r:
            r["file_vs_peer"] = r["file_bytes"] / peer["file_bytes"]


PROFILE_WRAPPERS = {
    "Method::execute",
    "Program::load_method",
    "Method::init",
    "OPERATOR_CALL",
    "DELEGATE_CALL",
}


def profile_decode(pte_path: str | Path, prompt_ids: list[int], decode_steps: int = 32) -> dict:
    """ETDump profile of the decode steps of a positions-design program (ours or export_llm's).

    Returns per decode step: total ms, the delegate calls and their ms, the portable (non-delegated)
    operator calls and their ms, and the ops that take the most time.
    """
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    from .peer import load_runner_ops

    load_runner_ops()
    program = Runtime.get().load_program(str(pte_path), enable_etdump=True)
    method = program.load_method("forward")
    method.execute([torch.tensor([prompt_ids]), torch.tensor([0])])
    for pos in range(len(prompt_ids), len(prompt_ids) + decode_steps):
        method.execute([torch.tensor([[prompt_ids[-1]]]), torch.tensor([pos])])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = str(Path(tmp) / "decode.etdp")
        program.write_etdump_result_to_file(etdump, str(Path(tmp) / "debug.bin"))
        frame = Inspector(etdump_path=etdump).to_dataframe()
    per_step: dict[str, list[float]] = {}  # event name -> [ms per step, calls per step]
    for name, raw in zip(frame["event_name"], frame["raw"], strict=True):
        if len(raw) != decode_steps + 1:
            continue  # not a per-run event (loading, init)
        decode_ms = raw[1:]  # raw[0] is the prefill run
        entry = per_step.setdefault(name, [0.0, 0.0])
        entry[0] += sum(decode_ms) / len(decode_ms)
        entry[1] += 1
    top = sorted((n for n in per_step if n not in PROFILE_WRAPPERS), key=lambda n: -per_step[n][0])
    portable = [
        n for n in per_step if n.startswith("native_call_") or "::" in n and n not in PROFILE_WRAPPERS
    ]
    return {
        "step_ms": per_step["Method::execute"][0],
        "delegate_calls": per_step.get("DELEGATE_CALL", [0, 0])[1],
        "delegate_ms": per_step.get("DELEGATE_CALL", [0.0])[0],
        "portable_calls": sum(per_step[n][1] for n in portable),
        "portable_ms": sum(per_step[n][0] for n in portable),
        "top_ops": [{"op": n, "ms": per_step[n][0], "calls": per_step[n][1]} for n in top[:10]],
    }


def format_profile(profiles: dict[str, dict]) -> str:
    """The key pair's decode profiles side by side: where a step's time goes."""
    lines = ["decode step profile (ETDump, ms per step):"]
    for label, p in profiles.items():
        lines.append(
            f"  {label}: {p['step_ms']:.2f} ms = {p['delegate_calls']:.0f} delegate calls {p['delegate_ms']:.2f} ms"
            f" + {p['portable_calls']:.0f} non-delegated ops {p['portable_ms']:.2f} ms; top: "
            + ", ".join(f"{o['op']} {o['ms']:.2f}" for o in p["top_ops"][:6])
        )
    return "\n".join(lines)


def goal_check(model_result: dict) -> list[str]:
    """The speed goal on the stories15M shape: ours XNNPACK fp32 >= 1.1x the peer's decode, >= 1.0x its prefill."""
    rows = {r["key"]: r for r in model_result["rows"]}
    if "peer" not in rows:
        return ["speed goal: not checked (the peer row was not measured)"]
    lines = []
    paired = model_result.get("paired_ratios")
    if paired:
        met = paired["decode"]["median"] >= GOAL_DECODE and paired["prefill"]["median"] >= GOAL_PREFILL
        lines.append(
            f"speed goal, paired rounds (ours positions vs peer, both in TextLLMRunner): decode "
            f"{paired['decode']['median']:.2f}x, prefill {paired['prefill']['median']:.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}' for r in paired['decode']['per_round'])}): {'MET' if met else 'NOT MET'}"
        )
    for key in ("runner-ours", "cpp", "pte-xnnpack"):
        if key in rows:
            r = rows[key]
            met = r["decode_vs_peer"] >= GOAL_DECODE and r["prefill_vs_peer"] >= GOAL_PREFILL
            lines.append(
                f"speed goal ({r['label']}): decode {r['decode_vs_peer']:.2f}x (goal >= {GOAL_DECODE}), "
                f"prefill {r['prefill_vs_peer']:.2f}x (goal >= {GOAL_PREFILL}): {'MET' if met else 'NOT MET'}"
            )
    return lines


def format_table(name: str, model_result: dict) -> str:
    """A plain-text table of one model's rows, ratios against the peer."""
    head = (
        f"{'runtime':<52} {'file MiB':>8} {'prefill t/s':>11} {'x peer':>6} {'decode t/s':>10} {'x peer':>6}"
        f" {'RSS MiB':>7} {'+RSS':>6} {'greedy=eager':>12} {'max|dlogit|':>11}"
    )
    lines = [
        f"{name}: prompt {model_result['prompt_tokens']} tokens, {model_result['new_tokens']} new tokens "
        "(medians; RSS = process peak, +RSS = over the interpreter before loading)",
        head,
        "-" * len(head),
    ]

    def fmt(value, spec: str, width: int) -> str:
        return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"

    for r in model_result["rows"]:
        size = r["file_bytes"] / 2**20 if "file_bytes" in r else None
        match = r["greedy_match"]
        match_text = f"{match:.2f}" if isinstance(match, float) else ("yes" if match else "NO")
        if "teacher_forced_agreement" in r:
            match_text += f" ({r['teacher_forced_agreement']:.2f})"
        lines.append(
            f"{r['label']:<52} {fmt(size, '.2f', 8)} {r['prefill_tps']:11.1f} {fmt(r.get('prefill_vs_peer'), '.2f', 6)}"
            f" {r['decode_tps']:10.1f} {fmt(r.get('decode_vs_peer'), '.2f', 6)} {r['peak_rss_mib']:7.0f}"
            f" {r['rss_increase_mib']:6.0f} {match_text:>12} {fmt(r.get('max_logit_error'), '.2e', 11)}"
        )
    return "\n".join(lines)


def run_bench(
    models: list[str],
    out: str | Path | None = None,
    rows: list[str] | None = None,
    prompt_tokens: int = 64,
    new_tokens: int = 128,
    repeats: int = 3,
    rounds: int = 10,
    work_dir: str | Path | None = None,
    threads: int | None = None,
    show: Callable[[str], None] = print,
) -> dict:
    """Bench the named models side by side, print the tables and the goal check, write JSON to `out`.

    With `work_dir` the exported programs are kept there, and programs already there are reused.
    `threads` sets PyTorch's and ExecuTorch's thread pools in the workers (default: as installed;
    the C++ runner keeps its own).
    """
    from tqdm import tqdm

    unknown = set(rows or ()) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROW_KEYS)}")
    if repeats < 1 or rounds < 1 or new_tokens < 2:
        raise ValueError(
            f"need repeats >= 1, rounds >= 1 and new_tokens >= 2, got {repeats}, {rounds}, {new_tokens}"
        )
    selected = [r for r in ROWS if rows is None or r.key in rows]
    result = {
        "machine": machine_info(),
        "threads": threads,
        "repeats": repeats,
        "rounds": rounds,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="llama2_et_bench_") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        reuse = work_dir is not None
        for name in models:
            bm = build_model(name, prompt_tokens)
            if len(bm.prompt_ids) + new_tokens > bm.model.args.max_seq_len:
                raise ValueError(
                    f"{name}: prompt + new_tokens exceeds max_seq_len={bm.model.args.max_seq_len}"
                )
            model_result = bench_model(
                bm,
                work / name,
                selected,
                new_tokens,
                repeats,
                rounds,
                tqdm,
                reuse,
                threads or torch.get_num_threads(),
            )
            model_result["goal"] = goal_check(model_result) if name == "stories15M-shape" else []
            result["models"][name] = model_result
            show(format_table(name, model_result))
            if model_result["profile"]:
                show(format_profile(model_result["profile"]))
            if (paired := model_result["paired_ratios"]) and not model_result["goal"]:
                show(
                    f"ours (positions .pte) / peer, both in TextLLMRunner, {rounds} alternating runs: "
                    f"decode {paired['decode']['median']:.2f}x, prefill {paired['prefill']['median']:.2f}x (medians)"
                )
            for line in model_result["goal"]:
                show(line)
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2))
        show(f"wrote {out}")
    return result


def machine_info() -> dict:
    """Where the numbers come from."""
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "executorch": version("executorch"),
    }


# ---- the worker: one runtime, measured in its own process ----


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _time_decoder(decoder, prompt_ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """One greedy run: prefill tok/s, decode tok/s and the new tokens."""
    decoder.reset()
    start = time.perf_counter()
    tokens = [int(decoder.step(prompt_ids, 0).argmax())]
    prefill_end = time.perf_counter()
    for pos in range(len(prompt_ids), len(prompt_ids) + new_tokens - 1):
        tokens.append(int(decoder.step([tokens[-1]], pos).argmax()))
    end = time.perf_counter()
    return len(prompt_ids) / (prefill_end - start), (new_tokens - 1) / (end - prefill_end), tokens


def _teacher_forced(decoder, prompt_ids: list[int], reference: dict) -> dict:
    """Logits on eager's own tokens: the largest error and how often the argmax agrees."""
    decoder.reset()
    logits = [decoder.step(prompt_ids, 0)]
    for i, token in enumerate(reference["tokens"][:-1]):
        logits.append(decoder.step([token], len(prompt_ids) + i))
    logits = torch.stack(logits).float()  # (N, V)
    ref = reference["logits"]
    return {
        "max_logit_error": float((logits - ref).abs().max()),
        "teacher_forced_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def _match(tokens: list[int], reference: list[int]) -> float:
    """Fraction of positions where greedy tokens equal eager's."""
    return sum(a == b for a, b in zip(tokens, reference, strict=False)) / len(reference)


def set_threads(threads: int, executorch: bool = True) -> None:
    """Size PyTorch's thread pool and ExecuTorch's (shared by the Python runtime and TextLLMRunner)."""
    torch.set_num_threads(threads)
    if executorch:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)


def _time_runner(runner, prompt: str, new_tokens: int) -> tuple[float, float, object]:
    """One greedy TextLLMRunner run: prefill tok/s (to the first piece), decode tok/s, its output."""
    out = runner.generate(prompt, new_tokens)
    t = out.piece_times
    return out.stats["prompt_tokens"] / t[0], (len(t) - 1) / (t[-1] - t[0]), out


def _worker_pair(spec: dict) -> dict:
    """Ours and the peer in one process, alternating run by run (and who goes first), after a warm-up each."""
    from .peer import TextRunner

    runners = {
        name: TextRunner(path, spec["tokenizer"])
        for name, path in zip(("ours", "peer"), spec["programs"], strict=True)
    }
    result = {name: {"prefill_tps": [], "decode_tps": []} for name in runners}
    for runner in runners.values():
        _time_runner(runner, spec["prompt"], spec["new_tokens"])
    for i in range(spec["rounds"]):
        for name in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
            prefill, decode, _ = _time_runner(runners[name], spec["prompt"], spec["new_tokens"])
            result[name]["prefill_tps"].append(prefill)
            result[name]["decode_tps"].append(decode)
    return result


def _worker(spec: dict) -> dict:
    """Measure one runtime as the spec says; the result holds per-repetition speeds and peak RSS."""
    kind, prompt_ids, n = spec["kind"], spec["prompt_ids"], spec["new_tokens"]
    reference = torch.load(spec["reference"])
    if kind == "cpp":
        return _worker_cpp(spec, reference)
    set_threads(spec["threads"], executorch=kind not in ("eager", "eager-nocache"))
    if kind == "pair":
        return _worker_pair(spec)
    if kind == "pte":
        from .runtime import PteDecoder
    elif kind in ("text-runner", "pair"):
        from .peer import load_runner_ops

        load_runner_ops()
    from .generate import EagerDecoder, NoCacheDecoder

    baseline = _reset_peak_rss()
    result: dict = {"prefill_tps": [], "decode_tps": []}
    if kind == "text-runner":
        from .peer import TextRunner

        runner = TextRunner(spec["program"], spec["tokenizer"])
        for _ in range(spec["repeats"] + 1):
            prefill, decode, out = _time_runner(runner, spec["prompt"], n)
            result["prefill_tps"].append(prefill)
            result["decode_tps"].append(decode)
        tokenizer = Tokenizer(spec["tokenizer"])
        eager_text = tokenizer.decode(prompt_ids + reference["tokens"])[len(tokenizer.decode(prompt_ids)) :]
        result["greedy_match"] = out.text == eager_text
        result["generated_tokens"] = len(out.pieces)
    else:
        if kind == "pte":
            decoder = PteDecoder(spec["program"])
        else:
            model = load_checkpoint(spec["checkpoint"])
            decoder = EagerDecoder(model) if kind == "eager" else NoCacheDecoder(model)
        for _ in range(spec["repeats"] + 1):
            prefill, decode, tokens = _time_decoder(decoder, prompt_ids, n)
            result["prefill_tps"].append(prefill)
            result["decode_tps"].append(decode)
        result["greedy_match"] = _match(tokens, reference["tokens"])
        result["generated_tokens"] = len(tokens)
        if kind == "pte":
            result.update(_teacher_forced(decoder, prompt_ids, reference))
    result["prefill_tps"], result["decode_tps"] = (
        result["prefill_tps"][1:],
        result["decode_tps"][1:],
    )  # warm-up
    peak = _status_kib("VmHWM")
    result["peak_rss_mib"] = peak / 1024
    result["rss_increase_mib"] = (peak - baseline) / 1024
    return result


SPEED_LINE = re.compile(r"^(prefill|decode): (\d+) tokens in [\d.]+ ms, ([\d.]+) tok/s", re.MULTILINE)


def _worker_cpp(spec: dict, reference: dict) -> dict:
    """Run the C++ runner repeats+1 times; parse its tok/s from stderr, its peak RSS from wait4."""
    result: dict = {"prefill_tps": [], "decode_tps": []}
    command = [spec["cpp_binary"], "--model", spec["program"], "--tokenizer", spec["tokenizer_bin"]]
    command += ["--prompt", spec["prompt"], "--steps", str(spec["new_tokens"]), "--temperature", "0"]
    command += ["--print-tokens"]
    peak_kib = 0
    with tempfile.TemporaryDirectory() as tmp:
        stdout_path, stderr_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        for _ in range(spec["repeats"] + 1):
            with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
                proc = subprocess.Popen(command, stdout=out, stderr=err)
                _, status, usage = os.wait4(proc.pid, 0)
            stderr = stderr_path.read_text()
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
            speeds = {phase: float(tps) for phase, _, tps in SPEED_LINE.findall(stderr)}
            result["prefill_tps"].append(speeds["prefill"])
            result["decode_tps"].append(speeds["decode"])
            peak_kib = max(peak_kib, usage.ru_maxrss)  # Linux: KiB
        ids = [int(x) for x in stdout_path.read_text().split()]
    tokens = ids[len(spec["prompt_ids"]) :]
    result["prefill_tps"], result["decode_tps"] = (
        result["prefill_tps"][1:],
        result["decode_tps"][1:],
    )  # warm-up
    result["greedy_match"] = _match(tokens, reference["tokens"])
    result["generated_tokens"] = len(tokens)
    result["peak_rss_mib"] = result["rss_increase_mib"] = peak_kib / 1024  # the process is the runtime
    return result


if __name__ == "__main__":
    spec_file, result_file = sys.argv[1:3]
    Path(result_file).write_text(json.dumps(_worker(json.loads(Path(spec_file).read_text()))))
