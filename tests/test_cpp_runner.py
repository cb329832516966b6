"""The C++ runner against references: eager PyTorch generation, sentencepiece, and bad inputs.

The runner is built once (reused while its sources are unchanged) and runs stories260K exported
in both program designs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from executorch.exir import to_edge_transform_and_lower

from llama2_et import contract, designs
from llama2_et.checkpoint import load_checkpoint
from llama2_et.cpp import build_runner, executorch_cmake_dir
from llama2_et.cpp.build import GENERATED_DIR, contract_header
from llama2_et.generate import EagerDecoder, Sampler, generate, generate_text
from llama2_et.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

PROMPTS = ["Once upon a time", "Lily and Ben went to the park. They saw a big dog!"]
STEPS = 60


@pytest.fixture(scope="module")
def runner():
    return build_runner()


@pytest.fixture(scope="module")
def ptes(stories260k_pte) -> dict:
    """stories260K as .pte: the gather design on XNNPACK, the preproc design on portable kernels."""
    return {
        "gather": stories260k_pte("gather", "xnnpack"),
        "preproc": stories260k_pte("preproc", "portable"),
    }


def run(runner, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=120)


@cache
def eager_greedy(data_dir, prompt: str, steps: int) -> tuple[list[int], str]:
    """Prompt ids + greedy ids, and the streamed text, from the eager model with its KV cache."""
    tokenizer = Tokenizer(data_dir / "tok512.model")
    ids = tokenizer.encode(prompt)
    decoder = EagerDecoder(load_checkpoint(data_dir / "stories260K.bin"))
    new_ids = list(generate(decoder, ids, steps, Sampler(0.0)))
    text = "".join(generate_text(decoder, tokenizer, prompt, steps, Sampler(0.0)))
    return ids + new_ids, text


@pytest.mark.parametrize("design", ["gather", "preproc"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_eager(runner, ptes, data_dir, design, prompt):
    ids, text = eager_greedy(data_dir, prompt, STEPS)
    common = ["--model", ptes[design], "--tokenizer", data_dir / "tok512.bin", "--prompt", prompt]
    as_ids = run(runner, *common, "--steps", STEPS, "--print-tokens")
    assert as_ids.returncode == 0, as_ids.stderr
    assert [int(t) for t in as_ids.stdout.split()] == ids
    as_text = run(runner, *common, "--steps", STEPS, "--temperature", 0)
    assert as_text.returncode == 0, as_text.stderr
    assert as_text.stdout == text + "\n"
    assert f"(inputs {', '.join(designs.SIGNATURES[design].names)})" in as_text.stderr
    assert "prefill:" in as_text.stderr and "decode:" in as_text.stderr


@pytest.fixture(scope="module")
def bucketed_pte(stories260k, pte_context, tmp_path_factory):
    """stories260K, gather design on XNNPACK, with buckets forward_32 and forward_64 beside forward."""
    from llama2_et.export import export_pte

    path = tmp_path_factory.mktemp("buckets") / "stories260K_buckets.pte"
    return export_pte(stories260k, path, max_seq_len=pte_context, buckets=(32, 64)).path


@pytest.mark.parametrize("prompt", PROMPTS)
def test_bucketed_program_greedy_equals_eager(runner, bucketed_pte, data_dir, prompt):
    """Prefill and decode cross the buckets' widths (32, 64): each step through the narrowest method."""
    ids, _ = eager_greedy(data_dir, prompt, STEPS)
    assert len(ids) > 64
    common = ["--model", bucketed_pte, "--tokenizer", data_dir / "tok512.bin", "--prompt", prompt]
    as_ids = run(runner, *common, "--steps", STEPS, "--print-tokens")
    assert as_ids.returncode == 0, as_ids.stderr
    assert [int(t) for t in as_ids.stdout.split()] == ids
    assert "buckets: 32, 64 of 128 cache positions" in as_ids.stderr


@pytest.mark.parametrize("design", ["gather", "preproc"])
def test_warmup_changes_no_token(runner, ptes, data_dir, design):
    """--warmup runs prefill and a decode step before timing; the rows it writes are rewritten before read."""
    ids, _ = eager_greedy(data_dir, PROMPTS[1], STEPS)
    common = ["--model", ptes[design], "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPTS[1]]
    result = run(runner, *common, "--steps", STEPS, "--print-tokens", "--warmup")
    assert result.returncode == 0, result.stderr
    assert [int(t) for t in result.stdout.split()] == ids


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_size_the_pool_and_change_no_token(runner, ptes, data_dir, threads):
    """--threads N runs XNNPACK on N threads (the runner says so) and decodes eager's greedy tokens."""
    ids, _ = eager_greedy(data_dir, PROMPTS[1], STEPS)
    common = ["--model", ptes["gather"], "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPTS[1]]
    result = run(runner, *common, "--steps", STEPS, "--print-tokens", "--threads", threads)
    assert result.returncode == 0, result.stderr
    assert f"\nthreads {threads}\n" in result.stderr
    assert [int(t) for t in result.stdout.split()] == ids


def test_tiny_top_p_is_greedy(runner, ptes, data_dir):
    """top-p keeps only the most likely token when p is tiny, whatever the temperature."""
    ids, _ = eager_greedy(data_dir, PROMPTS[0], STEPS)
    common = ["--model", ptes["gather"], "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPTS[0]]
    nucleus = run(runner, *common, "--steps", STEPS, "--temperature", 1, "--top-p", 1e-6, "--print-tokens")
    assert [int(t) for t in nucleus.stdout.split()] == ids


def test_sampling_follows_the_seed(runner, ptes, data_dir):
    """The same seed repeats its text, other seeds give other texts, temperature 0 ignores the seed."""
    _, greedy_text = eager_greedy(data_dir, PROMPTS[0], STEPS)
    common = ["--model", ptes["gather"], "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPTS[0]]

    def text(temperature: float, seed: int) -> str:
        result = run(runner, *common, "--steps", STEPS, "--temperature", temperature, "--seed", seed)
        assert result.returncode == 0, result.stderr
        return result.stdout

    sampled = {seed: text(1.0, seed) for seed in (1, 2, 3, 4)}
    assert text(1.0, 1) == sampled[1]
    assert len(set(sampled.values())) == len(sampled)
    assert all(t.startswith(PROMPTS[0]) and len(t) > len(PROMPTS[0]) + 20 for t in sampled.values())
    assert text(0.0, 1) == text(0.0, 2) == greedy_text + "\n"


def header_constants(header: str) -> dict:
    """contract.h's constants by their Python name (kGetMaxSeqLen -> GET_MAX_SEQ_LEN): ints, strings, tuples."""
    found = {}
    for name, array, value in re.findall(r"^constexpr [\w ]+\*? (k\w+)(\[\])? = \{?(.*?)\}?;$", header, re.M):
        items = tuple(json.loads(f"[{value}]"))
        found[re.sub(r"(?<!^)(?=[A-Z])", "_", name[1:]).upper()] = items if array else items[0]
    return found


def test_generated_contract_header_holds_the_contract(runner):
    """Every name and value of contract.py, and each signature's inputs, read back from the C++ header."""
    header = contract_header()
    expected = {k: v for k, v in vars(contract).items() if k.isupper() and not callable(v)}
    signatures = {k: v for k, v in vars(designs).items() if isinstance(v, designs.Signature)}
    for name, signature in signatures.items():
        expected |= {f"{name}_NAMES": signature.names, f"{name}_DTYPES": signature.dtypes}
    expected["BUCKET_PREFIX"] = designs.BUCKET_PREFIX
    assert header_constants(header) == expected
    assert set(designs.SIGNATURES.values()) <= set(signatures.values())
    assert (
        runner.parent / GENERATED_DIR / "contract.h"
    ).read_text() == header  # what the runner was built with


# The ExecuTorch thread pool members program.cpp declares itself (the wheel ships no threadpool.h).
THREADPOOL_SYMBOLS = {
    "_ZN10executorch9extension10threadpool14get_threadpoolEv",  # get_threadpool()
    "_ZNK10executorch9extension10threadpool10ThreadPool16get_thread_countEv",  # get_thread_count() const
    "_ZN10executorch9extension10threadpool10ThreadPool24_unsafe_reset_threadpoolEj",  # (uint32_t)
}


def dynamic_symbols(path: Path, which: str) -> set[str]:
    result = subprocess.run(["nm", "-D", which, str(path)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in result.stdout.splitlines() if line.strip()}


def test_thread_pool_declarations_match_the_wheel(runner):
    """The runner needs exactly the thread pool symbols program.cpp declares, and the wheel's .so
    defines each: a mangled name carries the parameters, so a wheel that changes them fails here."""
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    library = executorch_cmake_dir().parents[1] / "lib" / "libexecutorch_threadpool.so"
    needed = {s for s in dynamic_symbols(runner, "--undefined-only") if "threadpool" in s}
    assert needed == THREADPOOL_SYMBOLS
    assert THREADPOOL_SYMBOLS <= dynamic_symbols(library, "--defined-only")


def test_runner_stops_at_the_programs_eos_ids(runner, stories260k_eos_pte, data_dir):
    """A .pte whose EOS is a token greedy decoding emits mid-story ends the text exactly there."""
    path, prompt, expected = stories260k_eos_pte
    common = ["--model", path, "--tokenizer", data_dir / "tok512.bin", "--prompt", PROMPTS[0]]
    result = run(runner, *common, "--steps", STEPS, "--print-tokens")
    assert result.returncode == 0, result.stderr
    assert [int(t) for t in result.stdout.split()] == prompt + expected


@pytest.fixture(scope="module")
def wide_pte(tmp_path_factory) -> tuple[Path, int]:
    """Two stories15M layers with Llama 2's 32000-token vocabulary, random weights: a .pte over 64 MiB.

    Returns the .pte and the bytes of its linear layers' weights, which every decode step reads.
    """
    from llama2_et.config import preset
    from llama2_et.export import export_pte
    from llama2_et.model import Transformer

    torch.manual_seed(0)
    model = Transformer(preset("stories15M").replace(n_layers=2)).eval()
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    path = tmp_path_factory.mktemp("wide") / "wide.pte"
    export_pte(model, path, "gather", "xnnpack", max_seq_len=64)
    return path, sum(w.numel() * w.element_size() for w in linears)


def test_peak_rss_holds_the_weights_and_no_second_copy_of_the_file(runner, wide_pte, data_dir):
    """peak_rss_kib is at least the linear weights (a decode step reads them all, so they were
    resident) and, the program being mmapped, at most the file + 64 MiB: a second copy of a file over
    64 MiB, or the peak of the Python process that started the runner (getrusage), would break it."""
    path, linear_bytes = wide_pte
    pte_bytes = path.stat().st_size
    assert pte_bytes > 64 * 2**20
    common = ["--model", path, "--tokenizer", data_dir / "tokenizer.bin", "--prompt", PROMPTS[0]]
    result = run(runner, *common, "--steps", 8)
    assert result.returncode == 0, result.stderr
    reported = [int(n) for n in re.findall(r"^peak_rss_kib (\d+)$", result.stderr, re.MULTILINE)]
    assert len(reported) == 1, result.stderr
    assert linear_bytes <= reported[0] * 1024 <= pte_bytes + 64 * 2**20


def whitespace_corpus(n_random: int) -> list[str]:
    """Texts whose spaces, tabs, newlines, U+2581 and non-ASCII characters sentencepiece normalizes."""
    texts = [
        "",
        " ",
        "   ",
        "\t",
        "\n",
        "Once  upon",
        "  a  ",
        "a\tb",
        " \n a",
        "a \n b",
        "Hello\r\nworld",
        "  Once upon a time  ,  there  ",
        "x\u2581y",
        "x \u2581 y",
        "x\u2581 y",
        "\u2581",
        " \u2581 ",
        "\u3000a",
        "a\u00a0b",
        "<0x41> <s> </s> <unk>",
        "Tom had 123 apples and 45 pears.",
        "Zoë ate crème brûlée in 東京 🙂 at 10:45",
    ]
    rng = random.Random(0)
    parts = [
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "a",
        "b",
        "Once",
        "upon",
        ",",
        ".",
        "é",
        "東",
        "🙂",
        "\u2581",
        "  \n ",
    ]
    texts += ["".join(rng.choices(parts, k=rng.randint(1, 15))) for _ in range(n_random)]
    return texts


ILL_FORMED_UTF8 = [  # lone, cut, overlong, surrogate and past-U+10FFFF bytes among good characters
    b"\xff\xfe abc",
    b"ok \xc3 cut",
    b"\xe6\x9d\xb1\xe4",
    b"\xc0\xaf \xe0\x80\x80 \xe0\xa0\x80",
    b"\xed\xa0\x80 \xed\x9f\xbf",
    b"\xf0\x8f\xbf\xbf \xf0\x90\x80\x80 \xf4\x8f\xbf\xbf \xf4\x90\x80\x80 \xf5\x80",
    b"\x80\xbf Once  \xe2\x96\x81\xff upon",
]


@pytest.mark.parametrize("tokenizer", ["tok512", "tokenizer"])
def test_encoding_equals_sentencepiece(runner, data_dir, tokenizer):
    """The runner continues the prompt Python encodes: same ids as sentencepiece, whitespace included."""
    reference = Tokenizer(data_dir / f"{tokenizer}.model")
    sample = (data_dir / "tinystories_train_sample.txt").read_text()[:20_000]
    tokenizer_bin = data_dir / f"{tokenizer}.bin"
    for text in [*whitespace_corpus(40), sample]:
        assert runner_ids(runner, tokenizer_bin, text) == reference.encode(text), repr(text)
    for text in ILL_FORMED_UTF8:  # a prompt from argv need not be UTF-8; sentencepiece reads U+FFFD
        assert runner_ids(runner, tokenizer_bin, text) == [contract.BOS_ID, *reference.sp.encode(text)], text


def runner_ids(runner, tokenizer_bin, prompt: str | bytes) -> list[int]:
    """The ids (BOS first) the runner encodes a prompt to: text, or bytes that need not be UTF-8."""
    args = ["--tokenizer", str(tokenizer_bin), "--prompt", prompt, "--steps", "0", "--print-tokens"]
    result = subprocess.run([str(runner), *args], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [int(t) for t in result.stdout.split()]


def test_long_prompt_is_rejected_before_it_is_encoded(runner, ptes, data_dir, pte_context):
    """A 128 KB prompt, far past the context, is refused from its byte count alone.

    BPE merging is quadratic in the prompt's length; the runner refuses a prompt whose fewest
    possible tokens (BOS plus one per longest piece's bytes) exceed the context, so the message
    gives that lower bound ("at least N"), not an encoded count.
    """
    prompt = (data_dir / "tinystories_train_sample.txt").read_bytes()[:128_000].decode(errors="ignore")
    args = ["--model", ptes["gather"], "--tokenizer", data_dir / "tok512.bin", "--prompt", prompt]
    result = run(runner, *args, "--steps", 10)
    assert result.returncode == 1 and f"max_seq_len of {pte_context}" in result.stderr, result.stderr
    assert re.search(r"\bat least \d+", result.stderr), result.stderr


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, ptes, data_dir) -> dict:
    """Broken inputs: truncated and random .pte, a .pte of another signature, broken tokenizer.bin."""
    out = tmp_path_factory.mktemp("bad")
    good = ptes["gather"].read_bytes()
    (out / "truncated.pte").write_bytes(good[: len(good) // 3])
    (out / "random.pte").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (out / "truncated.bin").write_bytes((data_dir / "tok512.bin").read_bytes()[:3000])
    (out / "random.bin").write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8).numpy().tobytes())

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return x * 2

    program = torch.export.export(Doubler(), (torch.ones(4),))
    edge = to_edge_transform_and_lower(program, constant_methods={"get_max_seq_len": 8})
    (out / "doubler.pte").write_bytes(edge.to_executorch().buffer)

    class Tables(torch.nn.Module):  # the preproc signature, logits (1, 512) of zeros
        def forward(self, tokens, cos, sin, mask, input_pos):
            return (cos.sum() + sin.sum() + mask.sum() + (tokens.sum() + input_pos.sum()).float()).expand(
                1, 512
            ) * 0

    length, width = torch.export.Dim("length", max=8), torch.export.Dim("width", max=8)
    inputs = (
        torch.zeros(1, 2, dtype=torch.long),
        torch.ones(2, 4),
        torch.ones(2, 4),
        torch.ones(2, 3),
        torch.zeros(2, dtype=torch.long),
    )
    shapes = ({1: length}, {0: length}, {0: length}, {0: length, 1: width}, {0: length})
    program = torch.export.export(Tables(), inputs, dynamic_shapes=shapes)
    metadata = {contract.GET_MAX_SEQ_LEN: 8, contract.GET_HEAD_DIM: 6, contract.GET_ROPE_THETA: 10000.0}
    edge = to_edge_transform_and_lower(program, constant_methods=metadata)  # tables (8, 4) need head_dim 8
    (out / "tables.pte").write_bytes(edge.to_executorch().buffer)
    return out


BAD_INPUTS = {  # name: (arguments, text the message must contain)
    "missing .pte": (["--model", "{bad}/missing.pte"], "missing.pte"),
    "truncated .pte": (["--model", "{bad}/truncated.pte"], "truncated.pte"),
    "random .pte": (["--model", "{bad}/random.pte"], "random.pte"),
    "other signature": (["--model", "{bad}/doubler.pte"], "doubler.pte"),
    "tables unlike the metadata": (["--model", "{bad}/tables.pte"], "get_head_dim 6 call for tables (8, 3)"),
    "truncated tokenizer": (["--tokenizer", "{bad}/truncated.bin"], "truncated.bin"),
    "random tokenizer": (["--tokenizer", "{bad}/random.bin"], "random.bin"),
    "tokenizer of another model": (["--tokenizer", "{data}/tokenizer.bin"], "32000"),
    "prompt past max_seq_len": (["--prompt", "Once upon a time " * 200], "max_seq_len"),
    "steps past max_seq_len": (["--steps", "100000"], "max_seq_len"),
    "unknown flag": (["--tokens", "5"], "--tokens"),
    "missing value": (["--steps"], "--steps"),
    "not a number": (["--temperature", "hot"], "hot"),
    "top-p out of range": (["--top-p", "1.5"], "--top-p"),
    "negative seed": (["--seed", "-1"], "--seed"),
    "threads not a count": (["--threads", "two"], "--threads"),
    "too many threads": (["--threads", "100000"], "--threads"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_a_message_and_exit_1(runner, ptes, bad_files, data_dir, name):
    args, needle = BAD_INPUTS[name]
    defaults = {"--model": ptes["gather"], "--tokenizer": data_dir / "tok512.bin", "--steps": "10"}
    args = [a.format(bad=bad_files, data=data_dir) for a in args]
    for flag, value in defaults.items():  # a valid value for every flag the case leaves out
        if flag not in args:
            args = [flag, str(value), *args]
    result = run(runner, *args)
    assert result.returncode == 1, (result.returncode, result.stderr)  # not a signal: no crash, no abort
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and needle in error_lines[0], result.stderr
    assert "usage: llama2_et_runner" in result.stderr


def test_fresh_build_is_reused(runner):
    built_at = runner.stat().st_mtime_ns
    assert build_runner() == runner
    assert runner.stat().st_mtime_ns == built_at


def test_missing_cmake_or_compiler_is_a_clear_error(tmp_path, monkeypatch):
    cmake = shutil.which("cmake")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="cmake not found"):
        build_runner(tmp_path / "build")
    (tmp_path / "cmake").symlink_to(cmake)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
        build_runner(tmp_path / "build")


def read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write: mode 555, or sysfs for root, whom modes do not stop."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_build_dir_is_one_error_line(tmp_path, kind):
    if kind == "file":
        build_dir, needle = tmp_path / "build", "is a file"
        build_dir.write_text("not a folder")
    else:
        build_dir, needle = read_only_folder(tmp_path), "cannot write to build folder"
    result = subprocess.run(
        [sys.executable, "-m", "llama2_et", "build-runner", "--build-dir", str(build_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert needle in result.stderr and str(build_dir) in result.stderr and "--build-dir" in result.stderr


def test_build_runner_cli_prints_only_the_path(runner):
    result = subprocess.run(
        [sys.executable, "-m", "llama2_et", "build-runner"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{runner}\n"
