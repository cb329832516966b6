"""One measurement in its own process, so that its peak RSS belongs to the runtime it measures.

Run as `python -m llama2_et.bench.workers SPEC.json RESULT.json`; the spec's "kind" says what to
measure: a row's runtime (eager-nocache, eager, pte, text-runner, cpp), both TextLLMRunner programs
alternating (pair: TextLLMRunner or C++ runner sides), an ETDump decode profile (profile) or the machine's read bandwidth (bandwidth).
A timed run is a warm-up, then `repeats` runs of a fixed prefill and N greedy tokens.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..generate import Sampler, StepTimes, generate, teacher_forced
from ..tokenizer import Tokenizer
from .memory import reset_peak_rss, status_kib


def timed_greedy(decoder, prompt_ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """One greedy run of a Decoder: prefill tok/s, decode tok/s (new_tokens - 1 steps), the new tokens."""
    times = StepTimes()
    tokens = list(generate(decoder, prompt_ids, new_tokens, Sampler(), stop_ids=(), times=times))
    return len(prompt_ids) / times.prefill, (new_tokens - 1) / sum(times.decode), tokens


def timed_runner(runner, prompt: str, new_tokens: int) -> tuple[float, float, object]:
    """One greedy TextLLMRunner run: prefill tok/s (to the first piece), decode tok/s, its output."""
    out = runner.generate(prompt, new_tokens)
    t = out.piece_times
    return out.stats["prompt_tokens"] / t[0], (len(t) - 1) / (t[-1] - t[0]), out


def logit_agreement(decoder, prompt_ids: list[int], reference: dict) -> dict:
    """Logits on eager's own tokens: the largest error and how often the argmax agrees."""
    logits = torch.stack(teacher_forced(decoder, prompt_ids, reference["tokens"])).float()  # (N, V)
    ref = reference["logits"]
    return {
        "max_logit_error": float((logits - ref).abs().max()),
        "teacher_forced_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def match(tokens: list[int], reference: list[int]) -> float:
    """Fraction of positions where greedy tokens equal eager's."""
    return sum(a == b for a, b in zip(tokens, reference, strict=False)) / len(reference)


def set_threads(threads: int, executorch: bool = True) -> None:
    """Size PyTorch's thread pool and ExecuTorch's (shared by the Python runtime and TextLLMRunner)."""
    torch.set_num_threads(threads)
    if executorch:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)


def measure_pair(spec: dict) -> dict:
    """Two rows in one process, alternating run by run (and who goes first): {"ours", "reference"}.

    Each side is a program in TextLLMRunner or in our C++ runner (a process per run, as a user runs it).
    """
    from ..export_llm import TextRunner

    def timed(side: dict) -> tuple[float, float]:
        if side["kind"] == "cpp":
            prefill, decode, _, _ = run_cpp(spec, side["program"])
            return prefill, decode
        prefill, decode, _ = timed_runner(runners[side["key"]], spec["prompt"], spec["new_tokens"])
        return prefill, decode

    sides = dict(zip(("ours", "reference"), spec["sides"], strict=True))
    runners = {
        side["key"]: TextRunner(side["program"], spec["tokenizer"])
        for side in sides.values()
        if side["kind"] == "text-runner"
    }
    result = {name: {"prefill_tps": [], "decode_tps": []} for name in sides}
    for side in sides.values():
        timed(side)  # warm-up
    names = tuple(sides)
    for i in range(spec["rounds"]):
        for name in names if i % 2 == 0 else names[::-1]:
            prefill, decode = timed(sides[name])
            result[name]["prefill_tps"].append(prefill)
            result[name]["decode_tps"].append(decode)
    return result


def measure_runtime(spec: dict, reference: dict) -> dict:
    """Time one in-process runtime (eager, .pte or TextLLMRunner): speeds, peak RSS, then its quality.

    Peak RSS is read before the quality pass, which for a TextLLMRunner row loads the same program a
    second time in the Python runtime to read its logits (teacher-forced agreement, perplexity).
    """
    kind, prompt_ids, n = spec["kind"], spec["prompt_ids"], spec["new_tokens"]
    if kind in ("pte", "text-runner"):
        from ..runtime import PteDecoder
    if kind == "text-runner":
        from ..export_llm import TextRunner
        from ..runtime import register_llm_custom_ops

        register_llm_custom_ops()
    from ..generate import EagerDecoder, NoCacheDecoder

    baseline = reset_peak_rss()
    result: dict = {"prefill_tps": [], "decode_tps": []}
    decoder = None
    if kind == "text-runner":
        runner = TextRunner(spec["program"], spec["tokenizer"])
        for _ in range(spec["repeats"] + 1):
            prefill, decode, out = timed_runner(runner, spec["prompt"], n)
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
            prefill, decode, tokens = timed_greedy(decoder, prompt_ids, n)
            result["prefill_tps"].append(prefill)
            result["decode_tps"].append(decode)
        result["greedy_match"] = match(tokens, reference["tokens"])
        result["generated_tokens"] = len(tokens)
    result["prefill_tps"], result["decode_tps"] = (
        result["prefill_tps"][1:],
        result["decode_tps"][1:],
    )  # warm-up
    peak = status_kib("VmHWM")
    result["peak_rss_mib"] = peak / 1024
    result["rss_increase_mib"] = (peak - baseline) / 1024
    if kind == "text-runner":
        decoder = PteDecoder(spec["program"])
    if kind in ("pte", "text-runner"):
        result.update(logit_agreement(decoder, prompt_ids, reference))
    if kind != "eager-nocache" and spec.get("held_out_ids"):
        from ..quality import perplexity

        result["perplexity"] = perplexity(decoder, spec["held_out_ids"])
    return result


BANDWIDTH_PASSES_PER_RUN = 3  # sums of the bench's buffer before each timed C++ run (their median)
PEAK_RSS_LINE = re.compile(r"^peak_rss_kib (\d+)$", re.MULTILINE)
SPEED_LINE = re.compile(r"^(prefill|decode): (\d+) tokens in [\d.]+ ms, ([\d.]+) tok/s", re.MULTILINE)


def run_cpp(spec: dict, program: str) -> tuple[float, float, list[int], int]:
    """One run of the C++ runner: prefill tok/s, decode tok/s, the token ids, peak RSS KiB (all it prints).

    Its thread pool gets the spec's size, as the Python runtimes' do. Peak RSS is the runner's own
    report (the kernel's VmHWM): wait4's ru_maxrss would be the Python parent's after a vfork.
    """
    command = [spec["cpp_binary"], "--model", program, "--tokenizer", spec["tokenizer_bin"]]
    command += ["--prompt", spec["prompt"], "--steps", str(spec["new_tokens"]), "--temperature", "0"]
    command += ["--print-tokens", "--warmup"]  # timed warm, as TextLLMRunner is after its warm-up run
    command += ["--threads", str(spec["threads"])]
    with tempfile.TemporaryDirectory() as tmp:
        stdout_path, stderr_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
            returncode = subprocess.run(command, stdout=out, stderr=err).returncode
        stderr = stderr_path.read_text()
        if returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
        speeds = {phase: float(tps) for phase, _, tps in SPEED_LINE.findall(stderr)}
        ids = [int(x) for x in stdout_path.read_text().split()]
    return speeds["prefill"], speeds["decode"], ids, int(PEAK_RSS_LINE.search(stderr).group(1))


def measure_cpp(spec: dict, reference: dict) -> dict:
    """Run the C++ runner repeats+1 times (the first a warm-up): speeds, greedy match, peak RSS, and the
    read bandwidth measured right before each timed run (the runner is a process of its own, so the
    measurement never overlaps it), against which that run's own roof fraction is taken (roofline.py).
    """
    from .roofline import read_bandwidth

    torch.set_num_threads(spec["threads"])  # the bandwidth is read with the runner's thread count
    result: dict = {"prefill_tps": [], "decode_tps": [], "read_bandwidth_per_run": []}
    *_, peak_kib = run_cpp(spec, spec["program"])  # the warm-up, not timed
    for _ in range(spec["repeats"]):
        bandwidth = read_bandwidth(spec["bandwidth_buffer"], BANDWIDTH_PASSES_PER_RUN)
        result["read_bandwidth_per_run"].append(bandwidth["bytes_per_s"])
        prefill, decode, ids, rss_kib = run_cpp(spec, spec["program"])
        result["prefill_tps"].append(prefill)
        result["decode_tps"].append(decode)
        peak_kib = max(peak_kib, rss_kib)
    tokens = ids[len(spec["prompt_ids"]) :]
    result["greedy_match"] = match(tokens, reference["tokens"])
    result["generated_tokens"] = len(tokens)
    result["peak_rss_mib"] = result["rss_increase_mib"] = peak_kib / 1024  # the process is the runtime
    return result


def measure(spec: dict) -> dict:
    """Measure what the spec's kind names, with the spec's thread count."""
    kind = spec["kind"]
    if kind == "bandwidth":
        from .roofline import read_bandwidth

        torch.set_num_threads(spec["threads"])
        return read_bandwidth(spec["buffer_bytes"], spec["passes"])
    if kind == "cpp":  # a process of its own, given the thread count by --threads
        return measure_cpp(spec, torch.load(spec["reference"]))
    set_threads(spec["threads"], executorch=kind not in ("eager", "eager-nocache"))
    if kind == "pair":
        return measure_pair(spec)
    if kind == "profile":
        from .profile import profile_decode

        return profile_decode(spec["program"], spec["prompt_ids"])
    return measure_runtime(spec, torch.load(spec["reference"]))


if __name__ == "__main__":
    spec_file, result_file = sys.argv[1:3]
    Path(result_file).write_text(json.dumps(measure(json.loads(Path(spec_file).read_text()))))
